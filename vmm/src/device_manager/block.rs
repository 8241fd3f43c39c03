//! Drives: pre-flight checks on the image files, virtio-blk devices on the MMIO bus, runtime
//! updates (`PATCH /drives/{id}`) and the kernel command-line entries they need.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use virtio::block::{Block, BlockConfig, BlockError};
use virtio::GuestMemoryMmap;
use virtio::IoSubscriber;

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
    #[error("drives[{id}].path_on_host: `{path}` is neither a regular file nor a block device")]
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

/// Checks that `path` can back drive `id`: it exists and is a regular file or a raw block
/// device (as with Firecracker). Runs before any KVM work so a typo fails fast with a message
/// that names the drive.
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
    if !(meta.is_file() || meta.file_type().is_block_device()) {
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
    /// The drive's counters (shared with the device; read without its lock).
    pub fn counters(&self) -> Arc<virtio::block::BlockMetrics> {
        self.lock().metrics()
    }

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
            image_format: d.image_format,
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

/// On the way out: cached qcow2 metadata goes to the image files, so writes the guest
/// completed stay readable after a clean exit (as on raw images, through the page cache).
pub fn write_back_drives(devices: &[BlockDevice]) {
    for d in devices {
        if let Err(e) = d.lock().write_back() {
            log::error!(
                "drive `{}`: cannot write back image metadata: {e}",
                d.drive_id
            );
        }
    }
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
    use crate::config::{CacheType, ImageFormat, IoEngine, RateLimiterConfig, TokenBucketConfig};
    use crate::device_manager::mmio::MmioSlot;
    use crate::vstate::memory::create_guest_memory;
    use virtio::MmioTransport;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("xenia-blk-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        fn image(&self, name: &str, len: u64) -> PathBuf {
            let p = self.0.join(name);
            std::fs::File::create(&p).unwrap().set_len(len).unwrap();
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A drive wired to a transport but not to KVM (enough for updates and metrics).
    fn device(id: &str, path: &Path) -> BlockDevice {
        let block = Block::new(&BlockConfig {
            drive_id: id.into(),
            path_on_host: path.to_path_buf(),
            is_read_only: false,
            cache_type: CacheType::Unsafe,
            io_engine: IoEngine::Sync,
            image_format: ImageFormat::Raw,
            rate_limiter: None,
        })
        .unwrap();
        let device = Arc::new(Mutex::new(block));
        let mem = create_guest_memory(1 << 20, crate::config::HugePages::None).unwrap();
        let transport = MmioTransport::new(mem, device.clone()).unwrap();
        BlockDevice {
            drive_id: id.into(),
            device,
            mmio: MmioDevice {
                slot: MmioSlot {
                    base: 0xD000_0000,
                    irq: 5,
                },
                transport: Arc::new(Mutex::new(transport)),
            },
        }
    }

    fn update(id: &str, path: Option<&Path>, limiter: Option<RateLimiterConfig>) -> DriveUpdate {
        DriveUpdate {
            drive_id: id.into(),
            path_on_host: path.map(|p| p.to_string_lossy().into_owned()),
            rate_limiter: limiter,
        }
    }

    #[test]
    fn patch_swaps_the_backing_file_and_the_limiter() {
        let dir = Dir::new("patch");
        let small = dir.image("small.img", 1 << 20);
        let big = dir.image("big.img", 4 << 20);
        let devices = vec![device("root", &small)];
        assert_eq!(devices[0].lock().capacity(), 2048);
        update_drive(&devices, &update("root", Some(&big), None)).unwrap();
        assert_eq!(devices[0].lock().capacity(), 8192);
        let metrics = devices[0].lock().metrics();
        assert_eq!(metrics.snapshot().config_updates, 1);
        let limiter = RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 1 << 20,
                one_time_burst: None,
                refill_time: 1000,
            }),
            ops: None,
        };
        update_drive(&devices, &update("root", None, Some(limiter))).unwrap();
    }

    #[test]
    fn patch_errors_name_the_drive() {
        let dir = Dir::new("patch-err");
        let img = dir.image("a.img", 1 << 20);
        let devices = vec![device("data", &img)];
        let e = update_drive(&devices, &update("nope", Some(&img), None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("drives[nope]") && e.contains("no such drive"),
            "{e}"
        );
        let missing = dir.0.join("gone.img");
        let e = update_drive(&devices, &update("data", Some(&missing), None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("drives[data]") && e.contains("gone.img"), "{e}");
        // A failed swap keeps the old image.
        assert_eq!(devices[0].lock().capacity(), 2048);
    }

    #[test]
    fn metrics_appear_under_block_and_the_drive_id() {
        let dir = Dir::new("metrics");
        let img = dir.image("a.img", 1 << 20);
        let devices = vec![device("scratch", &img)];
        let metrics = Metrics::default();
        register_drive_metrics(&devices, &metrics);
        let snap = metrics.snapshot();
        assert_eq!(snap["block_scratch"]["read_bytes"], 0, "{snap}");
        assert!(snap["block_scratch"]["invalid_requests"].is_u64(), "{snap}");
    }

    #[test]
    fn pre_flight_names_the_drive_and_the_path() {
        let tmp = Dir::new("pf");
        let dir = tmp.0.clone();
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
        assert!(
            e.contains("neither a regular file nor a block device"),
            "{e}"
        );
        let img = dir.join("ok.img");
        std::fs::write(&img, [0u8; 4096]).unwrap();
        assert!(check_image("ok", &img).is_ok());
    }
}
