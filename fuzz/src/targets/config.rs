//! Configuration parsing: the `--config-file` document, every API body type, and the
//! command line.
//!
//! The first input byte picks what the rest is parsed as ([`KINDS`], modulo its length).
//! Properties checked: whatever parses and validates serialises back to JSON that parses
//! and validates again to an equal value (so `GET /vm/config` can always be fed back with
//! `--config-file`), and a `PATCH /machine-config` that applies yields a valid machine
//! configuration.

use serde::de::DeserializeOwned;
use serde::Serialize;
use vmm::config::{
    BootSourceConfig, DriveConfig, DriveUpdate, LoggerConfig, MachineConfig, MachineConfigUpdate,
    MetricsConfig, NetworkInterfaceConfig, NetworkInterfaceUpdate, SerialConfig, VmConfig,
};
use vmm::resources::VmResources;

/// What the input after the first byte is parsed as, by the first byte's value.
pub const KINDS: &[&str] = &[
    "config-file",
    "boot-source",
    "machine-config",
    "machine-config-patch",
    "drive",
    "drive-patch",
    "network-interface",
    "network-interface-patch",
    "logger",
    "metrics",
    "serial",
    "command-line",
];

pub fn run(data: &[u8]) {
    accepted(data);
}

/// Runs the input; returns whether it was accepted (parsed and validated), which tells
/// the seeds' test that every seed reaches past the parser.
fn accepted(data: &[u8]) -> bool {
    let Some((&kind, rest)) = data.split_first() else {
        return false;
    };
    match KINDS[usize::from(kind) % KINDS.len()] {
        "config-file" => config_file(rest),
        "boot-source" => body::<BootSourceConfig>(rest, BootSourceConfig::validate),
        "machine-config" => body::<MachineConfig>(rest, MachineConfig::validate),
        "machine-config-patch" => machine_config_patch(rest),
        "drive" => body::<DriveConfig>(rest, DriveConfig::validate),
        "drive-patch" => body::<DriveUpdate>(rest, DriveUpdate::validate),
        "network-interface" => {
            body::<NetworkInterfaceConfig>(rest, NetworkInterfaceConfig::validate)
        }
        "network-interface-patch" => {
            body::<NetworkInterfaceUpdate>(rest, NetworkInterfaceUpdate::validate)
        }
        "logger" => body::<LoggerConfig>(rest, LoggerConfig::validate),
        "metrics" => body::<MetricsConfig>(rest, MetricsConfig::validate),
        "serial" => body::<SerialConfig>(rest, SerialConfig::validate),
        _ => command_line(rest),
    }
}

/// `xenia --config-file`: the file is read as UTF-8 text first, as `main.rs` does.
fn config_file(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(config) = VmConfig::from_json(text) else {
        return false;
    };
    let json = match serde_json::to_string(&config) {
        Ok(json) => json,
        Err(e) => panic!("a valid configuration does not serialise: {e}"),
    };
    // Unset sections are written as in force (Firecracker's export shape), so the value read
    // back may spell out a default that was implicit: what must not change is the export.
    match VmConfig::from_json(&json) {
        Ok(again) => assert_eq!(
            serde_json::to_value(&again).ok(),
            serde_json::to_value(&config).ok(),
            "the configuration changed through {json}"
        ),
        Err(e) => panic!("GET /vm/config output is refused as a config file: {e}\n{json}"),
    }
    let resources = VmResources::from_config(config);
    let _ = resources.machine_config().mem_size_bytes();
    true
}

/// An API body: parsed as the API thread does, then validated as the route does.
fn body<T>(data: &[u8], validate: fn(&T) -> Result<(), vmm::config::ConfigError>) -> bool
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let Ok(value) = serde_json::from_slice::<T>(data) else {
        return false;
    };
    if validate(&value).is_err() {
        return false;
    }
    round_trip(&value, validate);
    true
}

fn round_trip<T>(value: &T, validate: fn(&T) -> Result<(), vmm::config::ConfigError>)
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let json = match serde_json::to_vec(value) {
        Ok(json) => json,
        Err(e) => panic!(
            "a valid {} does not serialise: {e}",
            std::any::type_name::<T>()
        ),
    };
    match serde_json::from_slice::<T>(&json) {
        Ok(again) => {
            assert_eq!(
                &again,
                value,
                "changed through {}",
                String::from_utf8_lossy(&json)
            );
            if let Err(e) = validate(&again) {
                panic!("valid before serialising, invalid after: {e}");
            }
        }
        Err(e) => panic!(
            "{} serialises to JSON it cannot read: {e}: {}",
            std::any::type_name::<T>(),
            String::from_utf8_lossy(&json)
        ),
    }
}

/// `PATCH /machine-config`: applied over the default and over a full configuration.
fn machine_config_patch(data: &[u8]) -> bool {
    let Ok(update) = serde_json::from_slice::<MachineConfigUpdate>(data) else {
        return false;
    };
    let bases = [
        MachineConfig::default(),
        MachineConfig {
            vcpu_count: 2,
            smt: true,
            ..MachineConfig::default()
        },
    ];
    let mut applied = false;
    for base in &bases {
        if let Ok(merged) = update.apply(base) {
            if let Err(e) = merged.validate() {
                panic!("a patch that applied gave an invalid machine config: {e}: {merged:?}");
            }
            round_trip(&merged, MachineConfig::validate);
            applied = true;
        }
    }
    applied
}

/// The command line: NUL-separated arguments, as the kernel hands them to `main`.
fn command_line(data: &[u8]) -> bool {
    let args: Vec<String> = data
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    vmm::cli::parse(args).is_ok()
}

/// Seeds: a valid document of every kind, prefixed with its selector byte.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let docs: &[(&str, &str)] = &[
        (
            "config-file",
            r#"{"boot-source": {"kernel_image_path": "/k", "initrd_path": "/i", "boot_args": "console=ttyS0 reboot=k"},
  "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": true, "track_dirty_pages": false, "huge_pages": "None", "cpu_template": "None"},
  "drives": [{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true, "is_read_only": false, "partuuid": null, "cache_type": "Writeback", "io_engine": "Async",
              "rate_limiter": {"bandwidth": {"size": 1048576, "one_time_burst": 0, "refill_time": 100}, "ops": {"size": 100, "refill_time": 1000}}},
             {"drive_id": "data", "path_on_host": "/d", "is_root_device": false, "is_read_only": true}],
  "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02", "mtu": 1500, "allow_mac_spoofing": false,
                          "rx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 10}}, "tx_rate_limiter": null}],
  "logger": {"log_path": "/l", "level": "Info", "show_level": true, "show_log_origin": false, "module": "vmm"},
  "metrics": {"metrics_path": "/m", "emit_id": true, "properties": {"a": "b"}},
  "serial": {"serial_out_path": "/s", "rate_limiter": {"size": 4096, "refill_time": 100}},
  "balloon": null, "vsock": null, "entropy": null, "mmds-config": null, "cpu-config": null, "pmem": null, "memory-hotplug": null}"#,
        ),
        (
            "boot-source",
            r#"{"kernel_image_path": "/k", "initrd_path": "/i", "boot_args": "console=ttyS0"}"#,
        ),
        (
            "machine-config",
            r#"{"vcpu_count": 4, "mem_size_mib": 1024, "smt": true, "track_dirty_pages": true, "huge_pages": "2M"}"#,
        ),
        ("machine-config-patch", r#"{"vcpu_count": 1, "smt": false, "mem_size_mib": 64}"#),
        (
            "drive",
            r#"{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true, "is_read_only": false, "partuuid": "0eaa91a0-01", "cache_type": "Unsafe", "io_engine": "Sync", "rate_limiter": {"ops": {"size": 10, "one_time_burst": 5, "refill_time": 100}}}"#,
        ),
        (
            "drive-patch",
            r#"{"drive_id": "rootfs", "path_on_host": "/r2", "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}"#,
        ),
        (
            "network-interface",
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:00:00:00:01", "mtu": 9000, "allow_mac_spoofing": true, "tx_rate_limiter": {"bandwidth": {"size": 100, "refill_time": 100}}}"#,
        ),
        (
            "network-interface-patch",
            r#"{"iface_id": "eth0", "rx_rate_limiter": {"ops": {"size": 1, "refill_time": 1}}, "tx_rate_limiter": {}}"#,
        ),
        (
            "logger",
            r#"{"log_path": "/l", "level": "Debug", "show_level": false, "show_log_origin": true, "module": "virtio::net"}"#,
        ),
        (
            "metrics",
            r#"{"metrics_path": "/m", "emit_id": false, "properties": {"host": "h1", "zone": "z"}}"#,
        ),
        ("serial", r#"{"serial_out_path": "/s", "rate_limiter": {"size": 10, "one_time_burst": 5, "refill_time": 10}}"#),
        (
            "command-line",
            "--api-sock\0/tmp/x.sock\0--config-file=/c.json\0--id\0vm-1\0--level\0debug\0--http-api-max-payload-size\09000\0--show-level\0--boot-timer\0--metrics-path\0/m\0--log-path=/l\0--seccomp-filter\0/f.json\0--no-seccomp\0--show-log-origin",
        ),
    ];
    docs.iter()
        .map(|(kind, doc)| {
            let selector = KINDS.iter().position(|k| k == kind).unwrap_or(0) as u8;
            let mut input = vec![selector];
            input.extend_from_slice(doc.as_bytes());
            (*kind, input)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_is_accepted() {
        for (kind, input) in seeds() {
            assert!(accepted(&input), "seed {kind} is refused");
        }
    }

    #[test]
    fn every_kind_has_a_seed() {
        let seeds = seeds();
        for kind in KINDS {
            assert!(seeds.iter().any(|(k, _)| k == kind), "no seed for {kind}");
        }
    }
}
