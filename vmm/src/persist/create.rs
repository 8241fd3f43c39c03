//! Taking a snapshot of a paused VM: the vCPU states (each saved on its own thread), the VM
//! state, the device layout, the memory file, then the state file; both files fsynced.

use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::memory::{region_states, write_diff, write_full, MemoryFileError, WriteStats};
use super::{encode, Snapshot, SnapshotType};
use crate::builder::RunningVm;
use crate::config::VmConfig;
use crate::vstate::vcpu::VcpuError;
use crate::vstate::vm_state::{save_vm, VmStateError};

/// How long a paused vCPU may take to report its state.
const SAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a snapshot could not be created; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(
        "a Diff snapshot needs dirty page tracking: set machine-config.track_dirty_pages \
         before boot, or track_dirty_pages in the snapshot load"
    )]
    DiffWithoutTracking,
    #[error("cannot save the vCPU state: {0}")]
    Vcpu(#[from] VcpuError),
    #[error("cannot save the VM state: {0}")]
    Vm(#[from] VmStateError),
    #[error("KVM_GET_DIRTY_LOG for memory slot {slot} failed: {source}")]
    DirtyLog {
        slot: u32,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryFileError),
    #[error("cannot encode the state: {0}")]
    Encode(String),
    #[error("snapshot_path `{path}`: {what}: {source}")]
    StateFile {
        path: String,
        what: &'static str,
        source: std::io::Error,
    },
}

/// What a created snapshot cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateStats {
    pub state_bytes: u64,
    pub memory: WriteStats,
}

/// The configuration as saved: the VM's own sections. Logger and metrics belong to the
/// process, not the VM: the restoring process has its own.
fn saved_config(config: &VmConfig) -> VmConfig {
    VmConfig {
        logger: None,
        metrics: None,
        ..config.clone()
    }
}

/// The pages written since the last call (which starts a new interval), per memory slot:
/// KVM's dirty log (what the guest wrote) OR-ed with the memory's own bitmap (what xenia's
/// threads wrote: used rings, request status, block reads, rx frames), one bit per page.
fn dirty_bitmaps(vm: &RunningVm) -> Result<Vec<Vec<u64>>, CreateError> {
    vm.memory
        .iter()
        .enumerate()
        .map(|(slot, region)| {
            let slot = slot as u32;
            let mut bits = vm
                .vm
                .fd()
                .get_dirty_log(slot, region.len() as usize)
                .map_err(|source| CreateError::DirtyLog { slot, source })?;
            let vmm = std::ops::Deref::deref(region).bitmap().get_and_reset();
            for (k, v) in bits.iter_mut().zip(vmm) {
                *k |= v;
            }
            Ok(bits)
        })
        .collect()
}

/// Snapshots `vm`, which the caller has paused, described by `config`.
pub fn create_snapshot(
    vm: &RunningVm,
    config: &VmConfig,
    snapshot_path: &str,
    mem_file_path: &str,
    snapshot_type: SnapshotType,
    usage: Option<crate::usage::UsageState>,
) -> Result<CreateStats, CreateError> {
    if snapshot_type == SnapshotType::Diff && !vm.track_dirty_pages {
        return Err(CreateError::DiffWithoutTracking);
    }
    let vcpus = vm
        .vcpus
        .iter()
        .map(|v| v.save_state(SAVE_TIMEOUT))
        .collect::<Result<Vec<_>, _>>()?;
    let vm_state = save_vm(vm.vm.fd())?;
    // Devices drained and held until memory is written, so the rings in the memory file
    // match the saved queue positions (the `io` thread cannot move them meanwhile).
    let quiesced = vm.devices().quiesce();
    let devices = quiesced.save_state();
    let config_json = serde_json::to_string(&saved_config(config))
        .map_err(|e| CreateError::Encode(e.to_string()))?;

    let mut diff_runs = Vec::new();
    let memory = match snapshot_type {
        SnapshotType::Full => {
            if vm.track_dirty_pages {
                // The next Diff is relative to this snapshot: forget what was dirty before.
                dirty_bitmaps(vm)?;
            }
            write_full(&vm.memory, mem_file_path, vm.memory_source.as_ref())?
        }
        SnapshotType::Diff => {
            let dirty = dirty_bitmaps(vm)?;
            let (stats, runs) = write_diff(&vm.memory, mem_file_path, &dirty)?;
            diff_runs = runs;
            stats
        }
    };

    drop(quiesced);

    let snapshot = Snapshot {
        xenia_version: env!("CARGO_PKG_VERSION").to_owned(),
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        snapshot_type,
        config_json,
        regions: region_states(&vm.memory),
        vm: vm_state,
        vcpus,
        devices,
        diff_runs,
        usage,
    };
    let bytes = encode(&snapshot).map_err(CreateError::Encode)?;
    let state_err = |what| {
        move |source| CreateError::StateFile {
            path: snapshot_path.to_owned(),
            what,
            source,
        }
    };
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(snapshot_path)
        .map_err(state_err("cannot create"))?;
    file.write_all(&bytes).map_err(state_err("write failed"))?;
    file.sync_all().map_err(state_err("fsync failed"))?;
    Ok(CreateStats {
        state_bytes: bytes.len() as u64,
        memory,
    })
}
