//! Drives: pre-flight checks on the image files, virtio-blk devices on the MMIO bus, runtime
//! updates (`PATCH /drives/{id}`) and the kernel command-line entries they need.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use virtio::block::{Block, BlockConfig, BlockError};
use virtio::IoSubscriber;
use vm_memory::GuestMemoryMmap;

use super::mmio::{attach_virtio_mmio, MmioAllocator, MmioDevice, MmioError, MmioSlot};
use super::DeviceBuses;
use crate::config::{DriveConfig, DriveUpdate};
use crate::metrics::Metrics;
use crate::vstate::vm::Vm;

/// Errors while setting up or updating drives; each names the drive and the path.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("drives[{id}].path_on_host: `{path}` does not exist")]
    Missing { id: String, path: PathBuf },
    #[error("drives[{id}].path_on_host: `{path}` is a directory, not a disk image")]
    Directory { id: String, path: PathBuf },
    #[error("drives[{id}].path_on_host: `{path}` is not a regular file")]
    NotRegular { id: String, path: PathBuf },
    #[error("drives[{id}].path_on_host: cannot inspect `{path}`: {source}")]
    Inspect {
        id: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("drives[{id}].path_on_host: missing")]
    NoPath { id: String },
    #[error("drives[{id}]: {source}")]
    Device { id: String, source: BlockError },
    #[error(transparent)]
    Mmio(#[from] MmioError),
    #[error("drives[{0}]: no such drive")]
    UnknownDrive(String),
}

/// Checks that `path` can back drive `id`: it exists and is a regular file. Runs before any
/// KVM work so a typo fails fast with a message that names the drive.
pub fn check_image(id: &str, path: &Path) -> Result<(), DriveError> {
    let (id, path_buf) = (id.to_owned(), path.to_path_buf());
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DriveError::Missing { id, path: path_buf })
        }
        Err(source) => {
            return Err(DriveError::Inspect {
                id,
                path: path_buf,
                source,
            })
        }
    };
    if meta.is_dir() {
        return Err(DriveError::Directory { id, path: path_buf });
    }
    if !meta.is_file() {
        return Err(DriveError::NotRegular { id, path: path_buf });
    }
    Ok(())
}

fn image_path(drive: &DriveConfig) -> Result<&Path, DriveError> {
    drive
        .path_on_host
        .as_deref()
        .map(Path::new)
        .ok_or_else(|| DriveError::NoPath {
            id: drive.drive_id.clone(),
        })
}

/// Pre-flight checks on every drive's image.
pub fn check_drives(drives: &[DriveConfig]) -> Result<(), DriveError> {
    for d in drives {
        check_image(&d.drive_id, image_path(d)?)?;
    }
    Ok(())
}

/// One attached drive.
#[derive(Debug)]
pub struct BlockDevice {
    pub drive_id: String,
    pub device: Arc<Mutex<Block>>,
    pub mmio: MmioDevice,
}

impl BlockDevice {
    fn lock(&self) -> MutexGuard<'_, Block> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device as the `io` loop holds it.
    pub fn subscriber(&self) -> IoSubscriber {
        self.device.clone()
    }
}

/// Creates a virtio-blk device per drive, in configuration order (which fixes the guest's
/// `/dev/vdX` names), and attaches each through virtio-mmio.
pub fn attach_drives(
    vm: &Vm,
    buses: &mut DeviceBuses,
    allocator: &mut MmioAllocator,
    memory: &GuestMemoryMmap,
    drives: &[DriveConfig],
) -> Result<Vec<BlockDevice>, DriveError> {
    let mut out = Vec::with_capacity(drives.len());
    for d in drives {
        let path = image_path(d)?;
        let config = BlockConfig {
            drive_id: d.drive_id.clone(),
            path_on_host: path.to_path_buf(),
            is_read_only: d.read_only(),
            cache_type: d.cache_type,
            io_engine: d.io_engine,
            rate_limiter: d.rate_limiter,
        };
        let block = Block::new(&config).map_err(|source| DriveError::Device {
            id: d.drive_id.clone(),
            source,
        })?;
        let device = Arc::new(Mutex::new(block));
        let what = format!("drives[{}]", d.drive_id);
        let mmio = attach_virtio_mmio(vm, buses, allocator, memory, device.clone(), &what)?;
        log::info!(
            "drive `{}` ({}, {:?}, {:?}{}) at {:#x} irq {}",
            d.drive_id,
            path.display(),
            d.io_engine,
            d.cache_type,
            if d.read_only() { ", read-only" } else { "" },
            mmio.slot.base,
            mmio.slot.irq
        );
        out.push(BlockDevice {
            drive_id: d.drive_id.clone(),
            device,
            mmio,
        });
    }
    Ok(out)
}

/// The arguments the kernel needs to find the drives: one `virtio_mmio.device=` per drive (in
/// `slots`, same order as `drives`) and the root device's `root=`.
pub fn drive_cmdline_args(drives: &[DriveConfig], slots: &[MmioSlot]) -> Vec<String> {
    let mut args: Vec<String> = slots.iter().map(MmioSlot::cmdline_entry).collect();
    args.extend(
        drives
            .iter()
            .enumerate()
            .filter_map(|(index, d)| d.root_arg(index)),
    );
    args
}

/// Applies `PATCH /drives/{id}` to the matching device: a new backing file (the guest gets a
/// config-change interrupt and re-reads the capacity) and/or new rate-limiter buckets.
pub fn update_drive(devices: &[BlockDevice], update: &DriveUpdate) -> Result<(), DriveError> {
    let dev = devices
        .iter()
        .find(|d| d.drive_id == update.drive_id)
        .ok_or_else(|| DriveError::UnknownDrive(update.drive_id.clone()))?;
    if let Some(path) = &update.path_on_host {
        let path = Path::new(path);
        check_image(&update.drive_id, path)?;
        dev.lock()
            .update_disk(path)
            .map_err(|source| DriveError::Device {
                id: update.drive_id.clone(),
                source,
            })?;
        log::info!(
            "drive `{}` now backed by {}",
            update.drive_id,
            path.display()
        );
    }
    if let Some(limiter) = &update.rate_limiter {
        dev.lock().update_rate_limiter(limiter);
        log::info!("drive `{}`: rate limiter updated", update.drive_id);
    }
    Ok(())
}

/// Adds each drive's counters to `metrics` as `block_<drive_id>`.
pub fn register_drive_metrics(devices: &[BlockDevice], metrics: &Metrics) {
    for d in devices {
        let counters = d.lock().metrics();
        metrics.register_device(
            format!("block_{}", d.drive_id),
            Box::new(move || serde_json::to_value(counters.snapshot()).unwrap_or(Value::Null)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_flight_names_the_drive_and_the_path() {
        let dir = std::env::temp_dir().join(format!("xenia-blk-pf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = check_image("data", &dir.join("nope.img"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("drives[data]") && e.contains("nope.img"), "{e}");
        assert!(e.contains("does not exist"), "{e}");
        let e = check_image("data", &dir).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = check_image("null", Path::new("/dev/null"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let img = dir.join("ok.img");
        std::fs::write(&img, [0u8; 4096]).unwrap();
        assert!(check_image("ok", &img).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
