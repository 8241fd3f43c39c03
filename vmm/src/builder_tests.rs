//! Unit tests of `builder.rs`: the kernel command line.
use super::*;
use crate::config::{BootSourceConfig, CacheType, DriveConfig, ImageFormat, IoEngine};

fn drive(id: &str, root: bool, partuuid: Option<&str>) -> DriveConfig {
    DriveConfig {
        drive_id: id.into(),
        path_on_host: Some(format!("/img/{id}")),
        is_root_device: root,
        partuuid: partuuid.map(str::to_owned),
        is_read_only: Some(!root),
        cache_type: CacheType::Unsafe,
        io_engine: IoEngine::Sync,
        image_format: ImageFormat::Raw,
        rate_limiter: None,
        socket: None,
    }
}

fn config(boot_args: Option<&str>, drives: Vec<DriveConfig>) -> VmConfig {
    VmConfig {
        boot_source: Some(BootSourceConfig {
            kernel_image_path: "/k".into(),
            boot_args: boot_args.map(str::to_owned),
            initrd_path: None,
        }),
        drives,
        ..Default::default()
    }
}

fn slots(n: usize) -> Vec<MmioSlot> {
    let mut a = MmioAllocator::default();
    (0..n)
        .map(|i| a.allocate(&format!("d{i}")).unwrap())
        .collect()
}

#[test]
fn linux_command_line_lists_every_drive_and_the_root_device() {
    let c = config(
        Some("console=ttyS0 reboot=k"),
        vec![
            drive("scratch", false, None),
            drive("rootfs", true, None),
            drive("data", false, None),
        ],
    );
    // ACPI describes the devices: only root= is added.
    assert_eq!(
        kernel_cmdline(&c, &slots(3)),
        "console=ttyS0 reboot=k root=/dev/vdb rw"
    );
    let mut off = c.clone();
    off.boot_source.as_mut().unwrap().boot_args = Some("console=ttyS0 acpi=off".into());
    assert_eq!(
        kernel_cmdline(&off, &slots(3)),
        "console=ttyS0 acpi=off virtio_mmio.device=4K@0xd0000000:5 \
         virtio_mmio.device=4K@0xd0001000:6 virtio_mmio.device=4K@0xd0002000:7 \
         root=/dev/vdb rw"
    );
}

#[test]
fn partuuid_root_and_default_arguments() {
    let c = config(None, vec![drive("rootfs", true, Some("0eaa91a0-01"))]);
    assert_eq!(
        kernel_cmdline(&c, &slots(1)),
        format!("{DEFAULT_BOOT_ARGS} root=PARTUUID=0eaa91a0-01 rw")
    );
    let none = config(Some("console=ttyS0"), Vec::new());
    assert_eq!(kernel_cmdline(&none, &[]), "console=ttyS0");
}
