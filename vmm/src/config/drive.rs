//! `drives`: virtio-blk devices backed by raw image files.

use serde::{Deserialize, Serialize};

use super::rate_limiter::validate_limiter;
use super::{validate_id, validate_path, ConfigError, RateLimiterConfig, MAX_DRIVES};

pub use virtio::block::{CacheType, ImageFormat, IoEngine};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    pub drive_id: String,
    /// Required for virtio-blk; absent only for vhost-user drives, which xenia refuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    pub is_root_device: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    #[serde(default)]
    pub is_read_only: Option<bool>,
    #[serde(default, deserialize_with = "super::export::null_as_default")]
    pub cache_type: CacheType,
    #[serde(default, deserialize_with = "super::export::null_as_default")]
    pub io_engine: IoEngine,
    /// xenia extension: `Raw` (default, omitted from `GET /vm/config`) or `Qcow2`. Never
    /// probed from the file.
    #[serde(default, skip_serializing_if = "is_raw")]
    pub image_format: ImageFormat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// vhost-user backend socket: accepted by the schema, refused by validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

fn is_raw(f: &ImageFormat) -> bool {
    *f == ImageFormat::Raw
}

impl DriveConfig {
    pub fn read_only(&self) -> bool {
        self.is_read_only.unwrap_or(false)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_id("drive_id", &self.drive_id)?;
        let field = |name: &str| format!("drives[{}].{name}", self.drive_id);
        if self.socket.is_some() {
            return Err(ConfigError::invalid(
                field("socket"),
                "vhost-user drives are not supported",
            ));
        }
        match &self.path_on_host {
            Some(p) => validate_path(&field("path_on_host"), p)?,
            None => return Err(ConfigError::invalid(field("path_on_host"), "is required")),
        }
        if let Some(uuid) = &self.partuuid {
            let ok = !uuid.is_empty()
                && uuid.len() <= 64
                && uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
            if !ok {
                return Err(ConfigError::invalid(
                    field("partuuid"),
                    format!("`{uuid}` is not a partition UUID (hex digits and `-`)"),
                ));
            }
        }
        if let Some(r) = &self.rate_limiter {
            validate_limiter(r, &field("rate_limiter"))?;
        }
        if self.image_format == ImageFormat::Qcow2 && self.io_engine == IoEngine::Async {
            return Err(ConfigError::invalid(
                field("io_engine"),
                "image_format Qcow2 needs io_engine Sync (the Async engine serves raw images only)",
            ));
        }
        Ok(())
    }

    /// The `root=` argument this drive contributes when it is the root device. `index` is the
    /// drive's position among the VM's drives, which fixes its `/dev/vdX` name in the guest.
    pub fn root_arg(&self, index: usize) -> Option<String> {
        if !self.is_root_device {
            return None;
        }
        let mode = if self.read_only() { "ro" } else { "rw" };
        Some(match &self.partuuid {
            Some(uuid) => format!("root=PARTUUID={uuid} {mode}"),
            None => format!("root=/dev/vd{} {mode}", disk_letters(index)),
        })
    }
}

/// Linux names virtio disks vda..vdz, vdaa..: the same bijective base-26 as spreadsheet columns.
fn disk_letters(mut index: usize) -> String {
    let mut out = Vec::new();
    loop {
        out.push(b'a' + (index % 26) as u8);
        if index < 26 {
            break;
        }
        index = index / 26 - 1;
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks the rules that span drives: unique ids, at most one root device, a bounded count.
pub(crate) fn validate_drive_set(drives: &[DriveConfig]) -> Result<(), ConfigError> {
    if drives.len() > MAX_DRIVES {
        return Err(ConfigError::invalid(
            "drives",
            format!(
                "{} drives given; at most {MAX_DRIVES} are supported",
                drives.len()
            ),
        ));
    }
    for (i, d) in drives.iter().enumerate() {
        d.validate()?;
        if drives[..i].iter().any(|o| o.drive_id == d.drive_id) {
            return Err(ConfigError::invalid(
                "drives",
                format!("drive id `{}` is used twice", d.drive_id),
            ));
        }
    }
    if drives.iter().filter(|d| d.is_root_device).count() > 1 {
        return Err(ConfigError::invalid(
            "drives",
            "more than one drive is a root device",
        ));
    }
    Ok(())
}

/// `PATCH /drives/{id}`: a new backing file and/or rate limiter for a running VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdate {
    pub drive_id: String,
    #[serde(default)]
    pub path_on_host: Option<String>,
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl DriveUpdate {
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_id("drive_id", &self.drive_id)?;
        if let Some(p) = &self.path_on_host {
            validate_path("path_on_host", p)?;
        }
        if let Some(r) = &self.rate_limiter {
            validate_limiter(r, "rate_limiter")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(id: &str, root: bool) -> DriveConfig {
        DriveConfig {
            drive_id: id.into(),
            path_on_host: Some(format!("/img/{id}")),
            is_root_device: root,
            partuuid: None,
            is_read_only: None,
            cache_type: CacheType::Unsafe,
            io_engine: IoEngine::Sync,
            image_format: ImageFormat::Raw,
            rate_limiter: None,
            socket: None,
        }
    }

    #[test]
    fn duplicate_ids_and_second_root_are_refused() {
        assert!(validate_drive_set(&[drive("a", true), drive("b", false)]).is_ok());
        let e = validate_drive_set(&[drive("a", false), drive("a", false)]).unwrap_err();
        assert!(e.to_string().contains("used twice"), "{e}");
        let e = validate_drive_set(&[drive("a", true), drive("b", true)]).unwrap_err();
        assert!(e.to_string().contains("root device"), "{e}");
        let many: Vec<_> = (0..=MAX_DRIVES)
            .map(|i| drive(&format!("d{i}"), false))
            .collect();
        assert!(validate_drive_set(&many).is_err());
    }

    #[test]
    fn ids_paths_and_vhost_user() {
        assert!(drive("../etc", false).validate().is_err());
        let mut d = drive("a", false);
        d.path_on_host = None;
        assert!(d
            .validate()
            .unwrap_err()
            .to_string()
            .contains("path_on_host"));
        let mut d = drive("a", false);
        d.socket = Some("/s".into());
        assert!(d.validate().unwrap_err().to_string().contains("vhost-user"));
        let mut d = drive("a", true);
        d.partuuid = Some("not a uuid".into());
        assert!(d.validate().is_err());
    }

    #[test]
    fn root_argument_follows_position_and_partuuid() {
        assert_eq!(drive("a", true).root_arg(0).unwrap(), "root=/dev/vda rw");
        let mut d = drive("a", true);
        d.is_read_only = Some(true);
        assert_eq!(d.root_arg(27).unwrap(), "root=/dev/vdab ro");
        d.partuuid = Some("0eaa91a0-01".into());
        assert_eq!(d.root_arg(0).unwrap(), "root=PARTUUID=0eaa91a0-01 ro");
        assert_eq!(drive("b", false).root_arg(1), None);
        assert_eq!(disk_letters(25), "z");
        assert_eq!(disk_letters(26), "aa");
    }

    #[test]
    fn image_format_is_an_extension_shown_only_when_not_raw() {
        let d = drive("a", false);
        let v = serde_json::to_value(&d).unwrap();
        assert!(v.get("image_format").is_none(), "{v}");
        let q: DriveConfig = serde_json::from_str(
            r#"{"drive_id":"q","path_on_host":"/q","is_root_device":false,"image_format":"Qcow2"}"#,
        )
        .unwrap();
        assert_eq!(q.image_format, ImageFormat::Qcow2);
        assert!(q.validate().is_ok());
        assert_eq!(serde_json::to_value(&q).unwrap()["image_format"], "Qcow2");
        let e = serde_json::from_str::<DriveConfig>(
            r#"{"drive_id":"q","is_root_device":false,"image_format":"Vmdk"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown variant `Vmdk`"), "{e}");
        let mut q = q;
        q.io_engine = IoEngine::Async;
        let e = q.validate().unwrap_err().to_string();
        assert!(e.contains("io_engine") && e.contains("Qcow2"), "{e}");
    }

    #[test]
    fn enums_use_firecrackers_names() {
        let d: DriveConfig = serde_json::from_str(
            r#"{"drive_id":"r","path_on_host":"/r","is_root_device":false,
                "cache_type":"Writeback","io_engine":"Async"}"#,
        )
        .unwrap();
        assert_eq!(
            (d.cache_type, d.io_engine),
            (CacheType::Writeback, IoEngine::Async)
        );
        let e = serde_json::from_str::<DriveConfig>(
            r#"{"drive_id":"r","is_root_device":false,"cache_type":"Fast"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown variant `Fast`"), "{e}");
    }
}
