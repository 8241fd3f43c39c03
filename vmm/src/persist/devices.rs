//! The devices part of a snapshot: the device states of `device_manager::persist` (serial,
//! i8042, each virtio device with its MMIO slot, transport and queues), checked here against
//! the configuration saved beside them before anything is built; the restore itself
//! (`DeviceSet::restore_state`) then checks every slot and field against the rebuilt devices.

use crate::config::VmConfig;
use crate::device_manager::persist::DeviceStates;

/// The drives and interfaces saved must be those of the configuration, in its order.
pub fn check_against_config(states: &DeviceStates, config: &VmConfig) -> Result<(), String> {
    let drives: Vec<&str> = states.drives.iter().map(|d| d.id.as_str()).collect();
    let want: Vec<&str> = config.drives.iter().map(|d| d.drive_id.as_str()).collect();
    if drives != want {
        return Err(format!(
            "drives saved as {drives:?}, the configuration lists {want:?}"
        ));
    }
    let nets: Vec<&str> = states.nets.iter().map(|n| n.id.as_str()).collect();
    let want: Vec<&str> = config
        .network_interfaces
        .iter()
        .map(|n| n.iface_id.as_str())
        .collect();
    if nets != want {
        return Err(format!(
            "network interfaces saved as {nets:?}, the configuration lists {want:?}"
        ));
    }
    Ok(())
}

/// The device layout for `--describe-snapshot`.
pub fn describe(states: &DeviceStates) -> serde_json::Value {
    let slot = |kind: &str, id: &str, base: u64, irq: u32| serde_json::json!({"kind": kind, "id": id, "mmio_base": base, "irq": irq});
    serde_json::Value::Array(
        states
            .drives
            .iter()
            .map(|d| slot("block", &d.id, d.slot.base, d.slot.irq))
            .chain(
                states
                    .nets
                    .iter()
                    .map(|n| slot("net", &n.id, n.slot.base, n.slot.irq)),
            )
            .collect(),
    )
}
