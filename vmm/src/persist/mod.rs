//! Snapshots: the saved state of a whole VM (this module), the state file's container
//! ([`container`]), the memory file ([`memory`]), taking a snapshot ([`create`]) and building
//! a VM from one ([`restore`]).
//!
//! A snapshot is two files. The **state file** holds a [`Snapshot`]: the VM configuration,
//! the memory layout, the KVM VM and vCPU states and the device states, in a versioned,
//! checksummed container. The **memory file** holds guest RAM, regions back to back,
//! page-aligned, sparse where the guest never wrote (a hole reads as zeros). A restore maps
//! the memory file `MAP_PRIVATE`: nothing is read up front, pages fault in from the page
//! cache, writes are copy-on-write, and clones of one snapshot share its clean pages.

pub mod container;
pub mod create;
pub mod devices;
pub mod memory;
pub mod restore;
pub mod uffd;

use serde::{Deserialize, Serialize};

pub use container::{decode, encode, DecodeError};

use crate::arch::arch_memory_regions;
use crate::config::{VmConfig, MAX_VCPUS};
use crate::device_manager::persist::DeviceStates;
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm_state::VmState;

/// The state-file format this xenia writes and reads. Bump it whenever the encoding of
/// [`Snapshot`] changes in any way.
/// 2: the usage record. 3: the entropy device and the balloon in the device states.
/// 4: the vsock device in the device states.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 4;

/// Page size of the memory file's granularity (holes, diff pages).
pub const PAGE_SIZE: u64 = 4096;

/// Full: every page the guest has; Diff: only the pages written since the previous snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SnapshotType {
    #[default]
    Full,
    Diff,
}

/// One guest RAM region and where its bytes are in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionState {
    pub guest_addr: u64,
    pub size: u64,
    pub file_offset: u64,
}

/// Everything a snapshot's state file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// The xenia version that wrote it (informational).
    pub xenia_version: String,
    /// When it was taken, milliseconds since the Unix epoch (informational).
    pub created_unix_ms: u64,
    pub snapshot_type: SnapshotType,
    /// The VM configuration as `GET /vm/config` shows it, in JSON: checked on load with the
    /// same rules as a `--config-file`.
    pub config_json: String,
    pub regions: Vec<RegionState>,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub devices: DeviceStates,
    /// Diff only: the (memory-file offset, length) runs the memory file holds; the rest is
    /// unchanged since the previous snapshot.
    pub diff_runs: Vec<(u64, u64)>,
    /// The usage counters at the snapshot and the identity that produced them (format 2):
    /// a restore continues them under a new identity (see `usage/`).
    pub usage: Option<crate::usage::UsageState>,
}

/// Why a decoded snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("the snapshot's configuration is invalid: {0}")]
    Config(String),
    #[error("the snapshot's memory layout does not match its {mib} MiB machine: {reason}")]
    Layout { mib: u64, reason: String },
    #[error("the snapshot has {got} vCPU states for a machine with {want} vCPUs")]
    VcpuCount { got: usize, want: u8 },
    #[error("the snapshot's vCPU state is invalid: {0}")]
    Vcpu(String),
    #[error("the snapshot's VM state is invalid: {0}")]
    Vm(String),
    #[error("the snapshot's device states do not match its configuration: {0}")]
    Devices(String),
    #[error("the snapshot's usage state is invalid: {0}")]
    Usage(String),
}

impl Snapshot {
    /// The configuration inside, validated like a config file.
    pub fn config(&self) -> Result<VmConfig, ValidateError> {
        VmConfig::from_json(&self.config_json).map_err(|e| ValidateError::Config(e.to_string()))
    }

    /// Checks every value against the configuration it claims: region layout, vCPU count,
    /// per-vCPU bounds, VM state, device layout. Returns the configuration.
    pub fn validate(&self) -> Result<VmConfig, ValidateError> {
        let config = self.config()?;
        let machine = config.machine_config.clone().unwrap_or_default();
        let mem = machine.mem_size_bytes();
        let mib = mem >> 20;
        let want = arch_memory_regions(mem);
        if want.len() != self.regions.len() {
            return Err(ValidateError::Layout {
                mib,
                reason: format!(
                    "{} regions saved, {} expected",
                    self.regions.len(),
                    want.len()
                ),
            });
        }
        let mut offset = 0u64;
        for (got, (addr, size)) in self.regions.iter().zip(want) {
            if got.guest_addr != addr.0 || got.size != size || got.file_offset != offset {
                return Err(ValidateError::Layout {
                    mib,
                    reason: format!(
                        "region {:#x}+{:#x} at file offset {:#x}, expected {:#x}+{size:#x} at {offset:#x}",
                        got.guest_addr, got.size, got.file_offset, addr.0
                    ),
                });
            }
            offset += size;
        }
        if machine.vcpu_count == 0 || machine.vcpu_count > MAX_VCPUS {
            return Err(ValidateError::Config(format!(
                "vcpu_count {} out of range",
                machine.vcpu_count
            )));
        }
        if self.vcpus.len() != usize::from(machine.vcpu_count) {
            return Err(ValidateError::VcpuCount {
                got: self.vcpus.len(),
                want: machine.vcpu_count,
            });
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            v.validate(i as u8)
                .map_err(|e| ValidateError::Vcpu(e.to_string()))?;
        }
        let len = self.memory_len();
        for &(offset, run) in &self.diff_runs {
            if self.snapshot_type != SnapshotType::Diff
                || offset % PAGE_SIZE != 0
                || run % PAGE_SIZE != 0
                || offset.checked_add(run).is_none_or(|end| end > len)
            {
                return Err(ValidateError::Layout {
                    mib,
                    reason: format!("diff run {offset:#x}+{run:#x} is invalid"),
                });
            }
        }
        self.vm
            .validate()
            .map_err(|e| ValidateError::Vm(e.to_string()))?;
        devices::check_against_config(&self.devices, &config).map_err(ValidateError::Devices)?;
        if let Some(usage) = &self.usage {
            usage
                .validate()
                .map_err(|e| ValidateError::Usage(e.to_string()))?;
        }
        Ok(config)
    }

    /// Total guest RAM, i.e. the memory file's expected length.
    pub fn memory_len(&self) -> u64 {
        self.regions.iter().map(|r| r.size).sum()
    }
}

/// `--describe-snapshot`: what a state file holds, as JSON (after every check).
pub fn describe(bytes: &[u8]) -> Result<serde_json::Value, String> {
    let snap = decode(bytes).map_err(|e| e.to_string())?;
    let config = snap.validate().map_err(|e| e.to_string())?;
    let machine = config.machine_config.clone().unwrap_or_default();
    Ok(serde_json::json!({
        "format_version": SNAPSHOT_FORMAT_VERSION,
        "xenia_version": snap.xenia_version,
        "created_unix_ms": snap.created_unix_ms,
        "snapshot_type": snap.snapshot_type,
        "vcpu_count": machine.vcpu_count,
        "mem_size_mib": machine.mem_size_mib,
        "memory_file_bytes": snap.memory_len(),
        "diff_bytes": snap.diff_runs.iter().map(|r| r.1).sum::<u64>(),
        "regions": snap.regions.iter().map(|r| serde_json::json!({
            "guest_addr": r.guest_addr, "size": r.size, "file_offset": r.file_offset
        })).collect::<Vec<_>>(),
        "tsc_khz": snap.vcpus.first().and_then(|v| v.tsc_khz),
        "devices": devices::describe(&snap.devices),
        "config": serde_json::from_str::<serde_json::Value>(&snap.config_json).unwrap_or_default(),
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use kvm_bindings::{kvm_irqchip, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_SLAVE};

    use super::*;

    pub(crate) fn sample_snapshot() -> Snapshot {
        let config = VmConfig::from_json(
            r#"{"boot-source": {"kernel_image_path": "/k"},
                "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}"#,
        )
        .unwrap();
        let vcpu: VcpuState =
            postcard::from_bytes(&postcard::to_stdvec(&zero_vcpu()).unwrap()).unwrap();
        Snapshot {
            xenia_version: "test".into(),
            created_unix_ms: 1,
            snapshot_type: SnapshotType::Full,
            config_json: serde_json::to_string(&config).unwrap(),
            regions: vec![RegionState {
                guest_addr: 0,
                size: 64 << 20,
                file_offset: 0,
            }],
            vm: VmState {
                clock: Default::default(),
                pit: Default::default(),
                pic_master: kvm_irqchip::default(),
                pic_slave: kvm_irqchip {
                    chip_id: KVM_IRQCHIP_PIC_SLAVE,
                    ..Default::default()
                },
                ioapic: kvm_irqchip {
                    chip_id: KVM_IRQCHIP_IOAPIC,
                    ..Default::default()
                },
            },
            vcpus: vec![vcpu],
            devices: sample_devices(),
            diff_runs: Vec::new(),
            usage: None,
        }
    }

    /// The state of a freshly built serial port and i8042, no virtio devices.
    fn sample_devices() -> DeviceStates {
        use ::devices::legacy::{SerialConsole, I8042};
        use ::devices::EventFdTrigger;
        let serial = SerialConsole::new(
            EventFdTrigger::new_nonblocking().unwrap(),
            Box::new(std::io::sink()),
        );
        let i8042 = I8042::new(
            EventFdTrigger::new_nonblocking().unwrap(),
            EventFdTrigger::new_nonblocking().unwrap(),
        );
        DeviceStates {
            serial: serial.save_state(),
            i8042: i8042.save_state(),
            drives: Vec::new(),
            nets: Vec::new(),
            entropy: None,
            balloon: None,
            vsock: None,
        }
    }

    fn zero_vcpu() -> VcpuState {
        VcpuState {
            index: 0,
            cpuid: vec![Default::default()],
            mp_state: Default::default(),
            regs: Default::default(),
            sregs: Default::default(),
            xsave: vec![0; 1024],
            xcrs: Default::default(),
            debug_regs: Default::default(),
            lapic: Default::default(),
            msrs: vec![],
            events: Default::default(),
            tsc_khz: Some(2_000_000),
        }
    }

    #[test]
    fn a_sample_round_trips_and_validates() {
        let s = sample_snapshot();
        let bytes = encode(&s).unwrap();
        let back = decode(&bytes).unwrap();
        assert!(back.validate().is_ok());
        assert_eq!(back.memory_len(), 64 << 20);
        // Compact: one vCPU and a tiny machine stay well under 16 KiB.
        assert!(bytes.len() < 16 << 10, "{} bytes", bytes.len());
    }

    #[test]
    fn usage_counters_ride_along_and_are_checked() {
        let mut s = sample_snapshot();
        let mut usage = crate::usage::UsageState {
            usage_id: "00112233445566778899aabbccddeeff".into(),
            usage_epoch: 3,
            ..Default::default()
        };
        usage.counters.wall.running_ms = 1234;
        usage.counters.memory.resident_mib_seconds = 5.5;
        s.usage = Some(usage.clone());
        let back = decode(&encode(&s).unwrap()).unwrap();
        assert!(back.validate().is_ok());
        assert_eq!(back.usage, Some(usage.clone()));
        usage.usage_id = "not-an-id".into();
        s.usage = Some(usage);
        assert!(matches!(s.validate(), Err(ValidateError::Usage(_))));
    }

    #[test]
    fn inconsistent_snapshots_are_refused() {
        let mut s = sample_snapshot();
        s.regions[0].size = 32 << 20;
        assert!(matches!(s.validate(), Err(ValidateError::Layout { .. })));
        let mut s = sample_snapshot();
        s.vcpus.push(s.vcpus[0].clone());
        assert!(matches!(s.validate(), Err(ValidateError::VcpuCount { .. })));
        let mut s = sample_snapshot();
        s.config_json = "{}".into();
        assert!(s.validate().is_err());
        let mut s = sample_snapshot();
        s.vm.ioapic.chip_id = 0;
        assert!(matches!(s.validate(), Err(ValidateError::Vm(_))));
    }
}
