//! Building a VM from a snapshot: read and check the state file, map the memory file, create
//! the devices from the saved configuration exactly as a cold boot would, check they sit
//! where the guest knows them, apply the saved VM and vCPU states, start the vCPUs paused.
//!
//! Everything is built locally and handed over only when every step succeeded: a failed load
//! drops what it made (threads stopped, memory unmapped) and leaves the VMM "Not started".

use std::fs::File;
use std::io::Read;
use std::sync::Arc;

use super::container::{HEADER_LEN, MAX_STATE_BYTES};
use super::memory::{map_memory_file, open_memory_file, MemoryFileError, MemorySource};
use super::uffd::{hand_over, UffdError};
use super::{decode, DecodeError, Snapshot, ValidateError};
use crate::builder::{
    create_devices, start_io_thread, start_vcpus, BootHooks, BuildOptions, Devices, RunningVm,
    StartError,
};
use crate::config::{HugePages, VmConfig};
use crate::device_manager::acpi::{attach_acpi_restored, register_acpi_metrics, AcpiDeviceError};
use crate::device_manager::persist::{DevicePersistError, DeviceSet};
use crate::metrics;
use crate::vstate::kvm::KvmContext;
use crate::vstate::memory::create_guest_memory;
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vcpu_state::VcpuPersistContext;
use crate::vstate::vm::Vm;
use crate::vstate::vm_state::{restore_vm, VmStateError};

/// Where guest memory comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryBackend {
    /// The memory file, mapped `MAP_PRIVATE`.
    File(String),
    /// A page-fault handler listening on this Unix socket (userfaultfd).
    Uffd(String),
}

/// What to restore and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    pub snapshot_path: String,
    pub backend: MemoryBackend,
    pub track_dirty_pages: bool,
    /// (iface_id, host_dev_name): the tap each interface uses instead of the saved one.
    pub network_overrides: Vec<(String, String)>,
    /// `vsock_override.uds_path`: where the restored vsock device listens instead.
    pub vsock_override: Option<String>,
    pub clock_realtime: bool,
}

/// Why a snapshot could not be loaded; each names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("snapshot_path `{path}`: {what}: {source}")]
    StateFile {
        path: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("snapshot_path `{path}`: the state file is {got} bytes, more than the {max} allowed")]
    StateTooLarge { path: String, got: u64, max: u64 },
    #[error("snapshot_path `{path}`: {source}")]
    Decode { path: String, source: DecodeError },
    #[error("snapshot_path `{path}`: {source}")]
    Invalid { path: String, source: ValidateError },
    #[error("network_overrides: the snapshot has no network interface `{0}`")]
    UnknownIface(String),
    #[error("network_overrides: {0}")]
    BadOverride(String),
    #[error("vsock_override: the snapshot has no vsock device")]
    NoVsock,
    #[error(
        "the snapshot's VM uses 2 MiB hugetlbfs pages (machine-config.huge_pages \"2M\"); a File \
         memory backend cannot map a regular file with them: load through a Uffd backend"
    )]
    HugePagesNeedUffd,
    #[error("mem_backend (Uffd): {0}")]
    Uffd(#[from] UffdError),
    #[error("cannot map guest memory for the Uffd backend: {0}")]
    UffdMemory(#[from] crate::vstate::memory::MemoryError),
    #[error(transparent)]
    Memory(#[from] MemoryFileError),
    #[error("cannot rebuild the VM: {0}")]
    Start(#[from] StartError),
    #[error("cannot restore the ACPI devices: {0}")]
    Acpi(#[from] AcpiDeviceError),
    #[error("cannot restore the devices: {0}")]
    Devices(#[from] DevicePersistError),
    #[error("cannot restore the VM state: {0}")]
    Vm(#[from] VmStateError),
    #[error("cannot restore the vCPUs: {0}")]
    Vcpu(#[from] VcpuError),
}

/// Logs at Debug how far a load got since `t0` (where the load latency goes).
fn mark(what: &str, t0: std::time::Instant) {
    log::debug!("snapshot load: {what} at {} us", t0.elapsed().as_micros());
}

/// Reads and decodes a state file, bounded by [`MAX_STATE_BYTES`].
pub fn read_state_file(path: &str) -> Result<Snapshot, LoadError> {
    let bytes = read_state_bytes(path)?;
    decode(&bytes).map_err(|source| LoadError::Decode {
        path: path.to_owned(),
        source,
    })
}

/// Reads a state file's bytes, refusing one larger than any valid state file.
pub fn read_state_bytes(path: &str) -> Result<Vec<u8>, LoadError> {
    let err = |what| {
        move |source| LoadError::StateFile {
            path: path.to_owned(),
            what,
            source,
        }
    };
    let file = File::open(path).map_err(err("cannot open"))?;
    let len = file.metadata().map_err(err("cannot stat"))?.len();
    let max = MAX_STATE_BYTES + HEADER_LEN as u64;
    if len > max {
        return Err(LoadError::StateTooLarge {
            path: path.to_owned(),
            got: len,
            max,
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // `take` bounds the read even if the file grows meanwhile.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(err("read failed"))?;
    Ok(bytes)
}

/// Applies `network_overrides` and `vsock_override` to the configuration the devices will
/// be built from.
fn apply_overrides(config: &mut VmConfig, options: &LoadOptions) -> Result<(), LoadError> {
    if let Some(path) = &options.vsock_override {
        let vsock = config.vsock.as_mut().ok_or(LoadError::NoVsock)?;
        vsock.uds_path = path.clone();
    }
    for (iface, tap) in &options.network_overrides {
        let n = config
            .network_interfaces
            .iter_mut()
            .find(|n| &n.iface_id == iface)
            .ok_or_else(|| LoadError::UnknownIface(iface.clone()))?;
        n.host_dev_name = tap.clone();
    }
    config
        .validate()
        .map_err(|e| LoadError::BadOverride(e.to_string()))
}

/// What a load produced.
pub type Loaded = (RunningVm, VmConfig, Option<crate::usage::UsageState>);

/// A restored VM, its vCPUs started and paused, the configuration it was built from (the
/// saved one with the overrides applied) and the usage counters saved with it (validated).
pub fn load_snapshot(
    options: &LoadOptions,
    build: BuildOptions,
    hooks: BootHooks,
) -> Result<Loaded, LoadError> {
    let path = &options.snapshot_path;
    let t0 = std::time::Instant::now();
    let snapshot = read_state_file(path)?;
    let mut config = snapshot.validate().map_err(|source| LoadError::Invalid {
        path: path.clone(),
        source,
    })?;
    apply_overrides(&mut config, options)?;
    mark("state file read and checked", t0);
    let machine = config.machine_config.clone().unwrap_or_default();

    // Uffd: anonymous memory (2 MiB hugetlb pages when the VM had them) whose faults the
    // handler serves; File: the memory file mapped MAP_PRIVATE.
    let (memory, source, uffd) = match &options.backend {
        MemoryBackend::File(mem_path) => {
            if machine.huge_pages == HugePages::Hugetlbfs2M {
                return Err(LoadError::HugePagesNeedUffd);
            }
            let file = Arc::new(open_memory_file(mem_path, snapshot.memory_len())?);
            let memory = map_memory_file(file.clone(), mem_path, &snapshot.regions)?;
            (memory, MemorySource::File(file), None)
        }
        MemoryBackend::Uffd(socket) => {
            let memory = create_guest_memory(snapshot.memory_len(), machine.huge_pages)?;
            let page_size = match machine.huge_pages {
                HugePages::Hugetlbfs2M => 2 << 20,
                _ => super::PAGE_SIZE,
            };
            let handed = hand_over(socket, &memory, &snapshot.regions, page_size)?;
            (memory, MemorySource::Uffd, Some(handed))
        }
    };

    let kvm = KvmContext::open().map_err(StartError::from)?;
    mark("/dev/kvm opened", t0);
    // The snapshot records the CPU template the VM was made with (its config): a host that
    // cannot honour it (another vendor, a feature the template sets missing) is refused here
    // rather than handing the guest a CPU it was not promised.
    // Only read KVM's CPUID when there is a template: a restore is on the latency path.
    let static_template = machine.cpu_template.as_deref().filter(|t| *t != "None");
    if static_template.is_some() || config.cpu_config.is_some() {
        let supported = kvm.supported_cpuid().map_err(StartError::from)?;
        crate::arch::cpu_template::check_for_host(
            static_template,
            config.cpu_config.as_ref(),
            &supported,
        )
        .map_err(StartError::from)?;
    }
    let mut vm = Vm::new(&kvm).map_err(StartError::from)?;
    mark("VM created", t0);
    vm.register_memory(&memory, options.track_dirty_pages)
        .map_err(StartError::from)?;
    mark("memory registered", t0);
    let Devices {
        mut buses,
        legacy,
        drives,
        nets,
        entropy,
        balloon,
        vsock,
        io,
    } = create_devices(&config, &vm, &memory, build)?;
    // The ACPI devices, with a new VM generation ID: every restore is a new generation.
    let poweroff = legacy.poweroff_trigger().map_err(StartError::ExitEvent)?;
    let mut acpi = attach_acpi_restored(&vm, &mut buses, &memory, poweroff)?;
    register_acpi_metrics(&acpi, metrics::global());
    mark("devices created", t0);
    // Checks the layout (ids, MMIO windows, IRQs) and every field before applying any.
    DeviceSet {
        legacy: &legacy,
        drives: &drives,
        nets: &nets,
        entropy: entropy.as_ref(),
        balloon: balloon.as_ref(),
        vsock: vsock.as_ref(),
    }
    .restore_state(&snapshot.devices)?;
    restore_vm(vm.fd(), &snapshot.vm, options.clock_realtime)?;
    mark("device and VM state applied", t0);

    let persist = Arc::new(VcpuPersistContext::new(&kvm.kvm, vm.fd()));
    let mut vcpus = Vec::with_capacity(snapshot.vcpus.len());
    for state in &snapshot.vcpus {
        let mut vcpu = Vcpu::new(&vm, state.index, buses.pio.clone(), buses.mmio.clone())?;
        vcpu.restore(state, &persist)?;
        vcpu.set_persist_context(persist.clone());
        vcpus.push(vcpu);
    }
    // Every restore is a new generation: a new id, and the GED interrupt that makes the
    // guest read it. Raised only now, with the IOAPIC and every vCPU's LAPIC restored and
    // before any vCPU runs: the (edge-triggered) interrupt needs a LAPIC to land in, and
    // restoring a LAPIC afterwards would overwrite the pending bit with the snapshot's.
    acpi.vmgenid.regenerate(&memory)?;
    let io_thread = start_io_thread(io, hooks.io_thread)?;
    mark("vCPUs restored, io thread started", t0);
    let (handles, vcpu_exits, vcpu_exit_evt) = start_vcpus(vcpus, true)?;
    mark("vCPUs started and paused", t0);
    Ok((
        RunningVm {
            kvm,
            vm,
            memory,
            legacy,
            acpi,
            vcpus: handles,
            vcpu_exits,
            vcpu_exit_evt,
            drives,
            nets,
            entropy,
            balloon,
            vsock,
            io_thread,
            persist,
            memory_source: Some(source),
            uffd,
            track_dirty_pages: options.track_dirty_pages,
        },
        config,
        snapshot.usage,
    ))
}
