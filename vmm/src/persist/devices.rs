//! The devices part of a snapshot: where each virtio device sits (MMIO window, IRQ), so a
//! restore can check that the devices it rebuilt from the saved configuration sit at the same
//! places the guest knows them by. (The devices' own states are saved beside this.)

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;

/// Which virtio device a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceKind {
    Block,
    Net,
}

/// One virtio-mmio device as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSlot {
    pub kind: DeviceKind,
    /// `drive_id` or `iface_id`.
    pub id: String,
    pub mmio_base: u64,
    pub irq: u32,
}

/// The device layout of a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesSnapshot {
    /// In attach order: the drives, then the network interfaces.
    pub slots: Vec<DeviceSlot>,
}

impl DevicesSnapshot {
    /// The ids and kinds must be those of the configuration, in attach order.
    pub fn validate(&self, config: &VmConfig) -> Result<(), String> {
        let want: Vec<(DeviceKind, &str)> = config
            .drives
            .iter()
            .map(|d| (DeviceKind::Block, d.drive_id.as_str()))
            .chain(
                config
                    .network_interfaces
                    .iter()
                    .map(|n| (DeviceKind::Net, n.iface_id.as_str())),
            )
            .collect();
        let got: Vec<(DeviceKind, &str)> =
            self.slots.iter().map(|s| (s.kind, s.id.as_str())).collect();
        if want != got {
            return Err(format!(
                "devices saved as {got:?}, the configuration lists {want:?}"
            ));
        }
        Ok(())
    }

    /// The rebuilt devices must sit where the saved ones did.
    pub fn check_layout(&self, rebuilt: &[DeviceSlot]) -> Result<(), String> {
        if self.slots.len() != rebuilt.len() {
            return Err(format!(
                "{} devices saved, {} rebuilt",
                self.slots.len(),
                rebuilt.len()
            ));
        }
        for (saved, now) in self.slots.iter().zip(rebuilt) {
            if saved != now {
                return Err(format!(
                    "{:?} `{}` was at MMIO {:#x} IRQ {}, rebuilt as {:?} `{}` at MMIO {:#x} IRQ {}",
                    saved.kind,
                    saved.id,
                    saved.mmio_base,
                    saved.irq,
                    now.kind,
                    now.id,
                    now.mmio_base,
                    now.irq
                ));
            }
        }
        Ok(())
    }

    pub fn describe(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.slots
                .iter()
                .map(|s| {
                    serde_json::json!({"kind": format!("{:?}", s.kind), "id": s.id,
                                       "mmio_base": s.mmio_base, "irq": s.irq})
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(irq: u32) -> DeviceSlot {
        DeviceSlot {
            kind: DeviceKind::Block,
            id: "rootfs".into(),
            mmio_base: 0xd000_0000,
            irq,
        }
    }

    #[test]
    fn a_moved_device_is_named() {
        let saved = DevicesSnapshot {
            slots: vec![slot(5)],
        };
        assert!(saved.check_layout(&[slot(5)]).is_ok());
        let e = saved.check_layout(&[slot(6)]).unwrap_err();
        assert!(
            e.contains("rootfs") && e.contains("IRQ 5") && e.contains("IRQ 6"),
            "{e}"
        );
        assert!(saved.check_layout(&[]).is_err());
    }

    #[test]
    fn ids_must_match_the_configuration() {
        let config = VmConfig::default();
        let saved = DevicesSnapshot {
            slots: vec![slot(5)],
        };
        assert!(saved.validate(&config).unwrap_err().contains("rootfs"));
        assert!(DevicesSnapshot::default().validate(&config).is_ok());
    }
}
