//! Everything gathered before boot: the VM configuration as the API (or a config file) builds
//! it up, with the host-side checks each pre-boot call makes on the files it names.
//!
//! Checks here touch the file system (does the kernel exist, can the drive be opened for
//! writing); the pure shape checks live with the config types. Every setter validates the
//! whole candidate configuration before committing it, so a refused call changes nothing.

use std::fs::{File, FileType, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::arch::cpu_template::{self, TemplateError};
use crate::config::{
    BootSourceConfig, ConfigError, CustomCpuTemplate, DriveConfig, DriveUpdate, ImageFormat,
    LoggerConfig, MachineConfig, MachineConfigUpdate, MetricsConfig, NetworkInterfaceConfig,
    NetworkInterfaceUpdate, SerialConfig, VmConfig,
};
use crate::device_manager::net::{check_tap, NetDeviceError};

/// Why a pre-boot resource was refused. Answered with 400 by the API.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{field}: cannot open `{path}` for {mode}: {source}")]
    File {
        field: String,
        path: String,
        mode: &'static str,
        source: std::io::Error,
    },
    #[error("{field}: `{path}` is not a regular file")]
    NotAFile { field: String, path: String },
    #[error(transparent)]
    Net(#[from] NetDeviceError),
    #[error("{field}: {source}")]
    Qcow2 {
        field: String,
        source: virtio::block::qcow2::Qcow2Error,
    },
    #[error(transparent)]
    CpuTemplate(#[from] TemplateError),
    #[error("cannot read this host's CPUID from KVM to check the CPU template: {0}")]
    Kvm(String),
}

/// Checks the CPU template `config` asks for (static or custom) against this host: the
/// vendor, and that every bit it sets is one KVM offers. Opens KVM only when a template is
/// set.
fn check_cpu_template(config: &VmConfig) -> Result<(), ResourceError> {
    let static_name = config
        .machine_config
        .as_ref()
        .and_then(|m| m.cpu_template.as_deref())
        .filter(|t| *t != "None");
    if static_name.is_none() && config.cpu_config.is_none() {
        return Ok(());
    }
    let kvm =
        crate::vstate::kvm::KvmContext::open().map_err(|e| ResourceError::Kvm(e.to_string()))?;
    let supported = kvm
        .supported_cpuid()
        .map_err(|e| ResourceError::Kvm(e.to_string()))?;
    cpu_template::check_for_host(static_name, config.cpu_config.as_ref(), &supported)?;
    Ok(())
}

/// Opens `path` for reading (and writing when `write`), and checks what it is.
///
/// What it is gets checked before the open too: opening a FIFO for reading waits for a
/// writer, which would hold the API (and the VMM thread) until one came. The open itself is
/// non-blocking as well, for a path swapped for a FIFO between the two checks.
fn check_file(
    field: &str,
    path: &str,
    write: bool,
    allow_block_device: bool,
) -> Result<(), ResourceError> {
    let mode = if write {
        "reading and writing"
    } else {
        "reading"
    };
    let io_error = |source| ResourceError::File {
        field: field.to_owned(),
        path: path.to_owned(),
        mode,
        source,
    };
    let acceptable =
        |kind: FileType| kind.is_file() || (allow_block_device && kind.is_block_device());
    let not_a_file = || ResourceError::NotAFile {
        field: field.to_owned(),
        path: path.to_owned(),
    };
    // A missing path is reported by the open below, with the mode it was wanted for.
    if let Ok(meta) = std::fs::metadata(path) {
        if !acceptable(meta.file_type()) {
            return Err(not_a_file());
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_error)?;
    let kind = File::metadata(&file).map_err(io_error)?.file_type();
    if acceptable(kind) {
        Ok(())
    } else {
        Err(not_a_file())
    }
}

/// The configuration of a VM that has not started yet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmResources {
    config: VmConfig,
}

impl VmResources {
    /// Resources taken from a config file (already validated by [`VmConfig::from_json`]).
    pub fn from_config(config: VmConfig) -> Self {
        Self { config }
    }

    /// The configuration gathered so far.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The machine configuration in effect (the default when none was given).
    pub fn machine_config(&self) -> MachineConfig {
        self.config.machine_config.clone().unwrap_or_default()
    }

    /// Replaces the configuration with `candidate` if it validates as a whole.
    /// Applies `change` to a copy of the configuration and keeps it only if the whole
    /// configuration still validates (cross-section rules: duplicate ids, one root device...).
    fn update(&mut self, change: impl FnOnce(&mut VmConfig)) -> Result<(), ResourceError> {
        let mut candidate = self.config.clone();
        change(&mut candidate);
        candidate.validate()?;
        self.config = candidate;
        Ok(())
    }

    pub fn set_boot_source(&mut self, boot: BootSourceConfig) -> Result<(), ResourceError> {
        boot.validate()?;
        check_file(
            "boot-source.kernel_image_path",
            &boot.kernel_image_path,
            false,
            false,
        )?;
        if let Some(initrd) = &boot.initrd_path {
            check_file("boot-source.initrd_path", initrd, false, false)?;
        }
        self.update(|c| c.boot_source = Some(boot))
    }

    pub fn set_machine_config(&mut self, machine: MachineConfig) -> Result<(), ResourceError> {
        let mut candidate = self.config.clone();
        candidate.machine_config = Some(machine.clone());
        check_cpu_template(&candidate)?;
        self.update(|c| c.machine_config = Some(machine))
    }

    /// `PUT /cpu-config`: a custom CPU template, checked against this host's KVM.
    pub fn set_cpu_config(&mut self, template: CustomCpuTemplate) -> Result<(), ResourceError> {
        let mut candidate = self.config.clone();
        candidate.cpu_config = Some(template.clone());
        candidate.validate()?;
        check_cpu_template(&candidate)?;
        self.update(|c| c.cpu_config = Some(template))
    }

    pub fn patch_machine_config(
        &mut self,
        update: &MachineConfigUpdate,
    ) -> Result<(), ResourceError> {
        let merged = update.apply(&self.machine_config())?;
        self.set_machine_config(merged)
    }

    /// `PUT /entropy`: adds the entropy device, or replaces its settings.
    pub fn set_entropy(
        &mut self,
        entropy: crate::config::EntropyDeviceConfig,
    ) -> Result<(), ResourceError> {
        self.update(|c| c.entropy = Some(entropy))
    }

    /// `PUT /mmds/config`: the interfaces it lists must be configured already.
    pub fn set_mmds_config(
        &mut self,
        mmds: crate::config::MmdsConfig,
    ) -> Result<(), ResourceError> {
        mmds.validate()?;
        self.update(|c| c.mmds_config = Some(mmds))
    }

    /// `PUT /vsock`: adds the vsock device, or replaces its settings (one device).
    pub fn set_vsock(
        &mut self,
        vsock: crate::config::VsockDeviceConfig,
    ) -> Result<(), ResourceError> {
        self.update(|c| c.vsock = Some(vsock))
    }

    /// `PUT /balloon`: adds the balloon, or replaces its settings.
    pub fn set_balloon(
        &mut self,
        balloon: crate::config::BalloonDeviceConfig,
    ) -> Result<(), ResourceError> {
        self.update(|c| c.balloon = Some(balloon))
    }

    /// Applies `change` to the configured balloon; `None` when there is none.
    pub fn update_balloon(
        &mut self,
        change: impl FnOnce(&mut crate::config::BalloonDeviceConfig),
    ) -> Option<Result<(), ResourceError>> {
        let mut balloon = self.config.balloon.clone()?;
        change(&mut balloon);
        Some(self.update(|c| c.balloon = Some(balloon)))
    }

    /// Adds a drive, or replaces the one with the same id (Firecracker's semantics).
    pub fn set_drive(&mut self, drive: DriveConfig) -> Result<(), ResourceError> {
        drive.validate()?;
        if let Some(path) = &drive.path_on_host {
            let field = format!("drives[{}].path_on_host", drive.drive_id);
            check_file(&field, path, !drive.read_only(), true)?;
            if drive.image_format == ImageFormat::Qcow2 {
                // Headers, limits and the whole backing chain, so a bad image is a 400 now
                // rather than a failed InstanceStart.
                virtio::block::qcow2::Qcow2Disk::validate(Path::new(path), drive.read_only())
                    .map_err(|source| ResourceError::Qcow2 { field, source })?;
            }
        }
        self.update(|c| upsert(&mut c.drives, drive, |a, b| a.drive_id == b.drive_id))
    }

    /// Records a `PATCH /drives/{id}` the running VM has applied, so that `GET /vm/config`
    /// shows the drive as it is now.
    pub fn record_drive_update(&mut self, update: &DriveUpdate) {
        if let Some(d) = self
            .config
            .drives
            .iter_mut()
            .find(|d| d.drive_id == update.drive_id)
        {
            if let Some(p) = &update.path_on_host {
                d.path_on_host = Some(p.clone());
            }
            if let Some(r) = &update.rate_limiter {
                d.rate_limiter = Some(*r);
            }
        }
    }

    /// Adds a network interface, or replaces the one with the same id. The tap is looked up
    /// at InstanceStart (the control plane may create it after this call).
    pub fn set_network_interface(
        &mut self,
        iface: NetworkInterfaceConfig,
    ) -> Result<(), ResourceError> {
        iface.validate()?;
        self.update(|c| {
            upsert(&mut c.network_interfaces, iface, |a, b| {
                a.iface_id == b.iface_id
            });
        })
    }

    /// Records a `PATCH /network-interfaces/{id}` the running VM has applied, so that
    /// `GET /vm/config` shows the limiters in force.
    pub fn record_network_interface_update(&mut self, update: &NetworkInterfaceUpdate) {
        if let Some(n) = self
            .config
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == update.iface_id)
        {
            if let Some(r) = &update.rx_rate_limiter {
                n.rx_rate_limiter = Some(*r);
            }
            if let Some(r) = &update.tx_rate_limiter {
                n.tx_rate_limiter = Some(*r);
            }
        }
    }

    pub fn set_serial(&mut self, serial: SerialConfig) -> Result<(), ResourceError> {
        self.update(|c| c.serial = Some(serial))
    }

    /// Records the logger section (the caller has applied it already).
    pub fn set_logger(&mut self, logger: LoggerConfig) -> Result<(), ResourceError> {
        self.update(|c| c.logger = Some(logger))
    }

    /// Records the metrics section (the caller has opened the sink already).
    pub fn set_metrics(&mut self, metrics: MetricsConfig) -> Result<(), ResourceError> {
        self.update(|c| c.metrics = Some(metrics))
    }

    /// Checks made just before building: the files named must still be there, and every
    /// section must be one this build can start.
    pub fn check_startable(&self) -> Result<(), ResourceError> {
        let Some(boot) = &self.config.boot_source else {
            return Err(ConfigError::invalid(
                "boot-source",
                "missing; set it with PUT /boot-source before InstanceStart",
            )
            .into());
        };
        check_file(
            "boot-source.kernel_image_path",
            &boot.kernel_image_path,
            false,
            false,
        )?;
        if let Some(initrd) = &boot.initrd_path {
            check_file("boot-source.initrd_path", initrd, false, false)?;
        }
        for iface in &self.config.network_interfaces {
            check_tap(iface)?;
        }
        Ok(())
    }
}

/// Replaces the item `same` as `item`, or appends it: a `PUT` with an existing id replaces
/// that device, as Firecracker does.
fn upsert<T>(items: &mut Vec<T>, item: T, same: impl Fn(&T, &T) -> bool) {
    match items.iter_mut().find(|i| same(i, &item)) {
        Some(slot) => *slot = item,
        None => items.push(item),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("xenia-res-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        fn file(&self, name: &str) -> String {
            let p = self.0.join(name);
            std::fs::write(&p, b"x").unwrap();
            p.to_string_lossy().into_owned()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn drive(id: &str, path: &str, root: bool, ro: bool) -> DriveConfig {
        serde_json::from_value(serde_json::json!({
            "drive_id": id, "path_on_host": path, "is_root_device": root, "is_read_only": ro
        }))
        .unwrap()
    }

    #[test]
    fn boot_source_paths_must_exist_and_be_files() {
        let d = Dir::new("boot");
        let kernel = d.file("k");
        let mut r = VmResources::default();
        let boot = |k: &str, i: Option<&str>| BootSourceConfig {
            kernel_image_path: k.into(),
            initrd_path: i.map(str::to_owned),
            boot_args: None,
        };
        let e = r
            .set_boot_source(boot("/no/such/kernel", None))
            .unwrap_err();
        assert!(e.to_string().contains("/no/such/kernel"), "{e}");
        let dir = d.0.to_string_lossy().into_owned();
        let e = r.set_boot_source(boot(&dir, None)).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = r
            .set_boot_source(boot(&kernel, Some("/no/initrd")))
            .unwrap_err();
        assert!(e.to_string().contains("initrd_path"), "{e}");
        assert!(
            r.config().boot_source.is_none(),
            "a refused call changed state"
        );
        r.set_boot_source(boot(&kernel, None)).unwrap();
        assert_eq!(
            r.config().boot_source.as_ref().unwrap().kernel_image_path,
            kernel
        );
    }

    #[test]
    fn drives_replace_by_id_and_keep_one_root() {
        let d = Dir::new("drives");
        let (a, b) = (d.file("a"), d.file("b"));
        let mut r = VmResources::default();
        r.set_drive(drive("root", &a, true, false)).unwrap();
        r.set_drive(drive("root", &b, true, true)).unwrap();
        assert_eq!(r.config().drives.len(), 1);
        let e = r.set_drive(drive("data", &a, true, false)).unwrap_err();
        assert!(e.to_string().contains("root device"), "{e}");
        let e = r
            .set_drive(drive("data", "/no/disk", false, false))
            .unwrap_err();
        assert!(e.to_string().contains("/no/disk"), "{e}");
        assert_eq!(r.config().drives.len(), 1);
    }

    #[test]
    fn a_fifo_is_refused_at_once_not_waited_on() {
        let d = Dir::new("fifo");
        let path = d.0.join("pipe");
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let path = path.to_string_lossy().into_owned();
        // Opening a FIFO read-only waits for a writer: run the calls on a thread so that a
        // regression fails this test instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        let fifo = path.clone();
        std::thread::spawn(move || {
            let mut r = VmResources::default();
            let ro = r
                .set_drive(drive("data", &fifo, false, true))
                .map_err(|e| e.to_string());
            let boot = r
                .set_boot_source(BootSourceConfig {
                    kernel_image_path: fifo,
                    initrd_path: None,
                    boot_args: None,
                })
                .map_err(|e| e.to_string());
            let _ = tx.send((ro, boot));
        });
        let (ro, boot) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a FIFO path blocked the pre-boot call");
        for e in [ro.unwrap_err(), boot.unwrap_err()] {
            assert!(e.contains("not a regular file") && e.contains(&path), "{e}");
        }
    }

    #[test]
    fn machine_config_patch_merges_and_validates() {
        let mut r = VmResources::default();
        let up: MachineConfigUpdate = serde_json::from_str(r#"{"vcpu_count": 2}"#).unwrap();
        r.patch_machine_config(&up).unwrap();
        assert_eq!(r.machine_config().vcpu_count, 2);
        assert_eq!(r.machine_config().mem_size_mib, 128);
        let bad: MachineConfigUpdate = serde_json::from_str(r#"{"vcpu_count": 0}"#).unwrap();
        assert!(r.patch_machine_config(&bad).is_err());
        assert_eq!(r.machine_config().vcpu_count, 2);
    }

    #[test]
    fn start_needs_a_boot_source() {
        let e = VmResources::default().check_startable().unwrap_err();
        assert!(e.to_string().contains("boot-source"), "{e}");
    }
}
