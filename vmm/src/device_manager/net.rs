//! Network interfaces: virtio-net devices over existing host taps on the MMIO bus, runtime
//! rate-limiter updates (`PATCH /network-interfaces/{id}`) and their metrics.
//!
//! The control plane creates the taps (as with Firecracker); xenia only attaches to them, so
//! a missing tap is a configuration error that names `host_dev_name`.

use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use virtio::net::{FrameEndpoint, Net, NetConfig, NetError, Tap, TapError};
use virtio::GuestMemoryMmap;
use virtio::IoSubscriber;

use super::mmio::{attach_virtio_mmio, MmioAllocator, MmioDevice, MmioError};
use super::DeviceBuses;
use crate::config::{MmdsConfig, NetworkInterfaceConfig, NetworkInterfaceUpdate};
use crate::metrics::Metrics;
use crate::vstate::vm::Vm;

/// Errors while setting up or updating network interfaces; each names the interface.
#[derive(Debug, thiserror::Error)]
pub enum NetDeviceError {
    #[error("network-interfaces[{id}].host_dev_name: {source}")]
    Tap { id: String, source: TapError },
    #[error("network-interfaces[{id}]: {source}")]
    Device { id: String, source: NetError },
    #[error(transparent)]
    Mmio(#[from] MmioError),
    #[error("network-interfaces[{0}]: no such network interface")]
    UnknownInterface(String),
}

impl NetDeviceError {
    /// Tap problems name the `host_dev_name` field; the rest name the interface.
    fn from_net(id: &str, e: NetError) -> Self {
        match e {
            NetError::Tap { source, .. } => Self::Tap {
                id: id.to_owned(),
                source,
            },
            source => Self::Device {
                id: id.to_owned(),
                source,
            },
        }
    }
}

/// Checks that the tap of `iface` exists and can be attached (it is a tap, not in use by
/// another process). Runs on `PUT /network-interfaces` so a typo fails at once; the tap is
/// released again right away.
pub fn check_tap(iface: &NetworkInterfaceConfig) -> Result<(), NetDeviceError> {
    Tap::open(&iface.host_dev_name)
        .map(drop)
        .map_err(|source| NetDeviceError::Tap {
            id: iface.iface_id.clone(),
            source,
        })
}

/// One attached network interface.
#[derive(Debug)]
pub struct NetDevice {
    pub iface_id: String,
    pub device: Arc<Mutex<Net>>,
    pub mmio: MmioDevice,
}

impl NetDevice {
    fn lock(&self) -> MutexGuard<'_, Net> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device as the `io` loop holds it.
    /// The interface's counters (shared with the device; read without its lock).
    pub fn counters(&self) -> Arc<virtio::net::NetMetrics> {
        self.lock().metrics()
    }

    pub fn subscriber(&self) -> IoSubscriber {
        self.device.clone()
    }
}

/// The metadata service and its configuration, for the interfaces `mmds-config` lists.
#[derive(Debug, Clone)]
pub struct MmdsForNets {
    pub config: MmdsConfig,
    pub service: Arc<Mutex<mmds::Mmds>>,
}

/// The `mmds` crate's endpoint as the net device sees it.
struct MmdsEndpoint(mmds::MmdsStack);

// The device reads as many bytes as the endpoint needs to decide.
const _: () = assert!(mmds::stack::HEAD_LEN == virtio::net::ENDPOINT_HEAD_LEN);

impl FrameEndpoint for MmdsEndpoint {
    fn wants(&self, head: &[u8]) -> bool {
        self.0.wants(head)
    }
    fn handle_frame(&mut self, frame: &[u8]) {
        self.0.handle_frame(frame);
    }
    fn has_frames(&self) -> bool {
        self.0.has_frames()
    }
    fn next_frame(&mut self) -> Option<Vec<u8>> {
        self.0.next_frame()
    }
}

/// The endpoint for `iface`, if `mmds-config` lists it.
fn mmds_endpoint(
    iface: &NetworkInterfaceConfig,
    mmds: Option<&MmdsForNets>,
) -> Option<Box<dyn FrameEndpoint>> {
    let m = mmds.filter(|m| m.config.network_interfaces.contains(&iface.iface_id))?;
    let config = mmds::StackConfig {
        ipv4: m.config.ipv4_address,
    };
    log::info!(
        "network interface `{}` answers the MMDS at {}",
        iface.iface_id,
        config.ipv4
    );
    Some(Box::new(MmdsEndpoint(mmds::MmdsStack::new(
        &config,
        m.service.clone(),
    ))))
}

fn net_config(iface: &NetworkInterfaceConfig) -> NetConfig {
    NetConfig {
        iface_id: iface.iface_id.clone(),
        host_dev_name: iface.host_dev_name.clone(),
        guest_mac: iface.guest_mac.map(|m| m.0),
        mtu: iface.mtu,
        allow_mac_spoofing: iface.allow_mac_spoofing,
        rx_rate_limiter: iface.rx_rate_limiter,
        tx_rate_limiter: iface.tx_rate_limiter,
    }
}

/// Creates a virtio-net device per interface, in configuration order (which fixes the
/// guest's `eth0`, `eth1`, ... order after the drives), and attaches each through
/// virtio-mmio.
pub fn attach_net_devices(
    vm: &Vm,
    buses: &mut DeviceBuses,
    allocator: &mut MmioAllocator,
    memory: &GuestMemoryMmap,
    ifaces: &[NetworkInterfaceConfig],
    mmds: Option<&MmdsForNets>,
) -> Result<Vec<NetDevice>, NetDeviceError> {
    let mut out = Vec::with_capacity(ifaces.len());
    for iface in ifaces {
        let mut net = Net::new(&net_config(iface))
            .map_err(|e| NetDeviceError::from_net(&iface.iface_id, e))?;
        if let Some(endpoint) = mmds_endpoint(iface, mmds) {
            net.set_frame_endpoint(endpoint);
        }
        let device = Arc::new(Mutex::new(net));
        let what = format!("network-interfaces[{}]", iface.iface_id);
        let mmio = attach_virtio_mmio(vm, buses, allocator, memory, device.clone(), &what)?;
        log::info!(
            "network interface `{}` on tap `{}` (mac {}{}) at {:#x} irq {}",
            iface.iface_id,
            iface.host_dev_name,
            iface
                .guest_mac
                .map_or_else(|| "unset".to_owned(), |m| m.to_string()),
            if iface.allow_mac_spoofing {
                ", spoofing allowed"
            } else {
                ""
            },
            mmio.slot.base,
            mmio.slot.irq
        );
        out.push(NetDevice {
            iface_id: iface.iface_id.clone(),
            device,
            mmio,
        });
    }
    Ok(out)
}

/// Applies `PATCH /network-interfaces/{id}`: the limiters given replace the current ones at
/// once (the io loop is woken to re-evaluate throttled traffic).
pub fn update_net_device(
    devices: &[NetDevice],
    update: &NetworkInterfaceUpdate,
) -> Result<(), NetDeviceError> {
    let dev = devices
        .iter()
        .find(|d| d.iface_id == update.iface_id)
        .ok_or_else(|| NetDeviceError::UnknownInterface(update.iface_id.clone()))?;
    dev.lock().update_rate_limiters(
        update.rx_rate_limiter.as_ref(),
        update.tx_rate_limiter.as_ref(),
    );
    log::info!(
        "network interface `{}`: rate limiters updated (rx {}, tx {})",
        update.iface_id,
        if update.rx_rate_limiter.is_some() {
            "new"
        } else {
            "unchanged"
        },
        if update.tx_rate_limiter.is_some() {
            "new"
        } else {
            "unchanged"
        },
    );
    Ok(())
}

/// Adds each interface's counters to `metrics` as `net_<iface_id>`.
pub fn register_net_metrics(devices: &[NetDevice], metrics: &Metrics) {
    for d in devices {
        let counters = d.lock().metrics();
        metrics.register_device(
            format!("net_{}", d.iface_id),
            Box::new(move || serde_json::to_value(counters.snapshot()).unwrap_or(Value::Null)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MacAddr;

    fn iface(id: &str, tap: &str) -> NetworkInterfaceConfig {
        NetworkInterfaceConfig {
            iface_id: id.into(),
            host_dev_name: tap.into(),
            guest_mac: Some(MacAddr([6, 0, 0, 0, 0, 1])),
            mtu: Some(1500),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
            allow_mac_spoofing: false,
        }
    }

    #[test]
    fn a_missing_tap_names_the_field_and_the_tap() {
        let e = check_tap(&iface("eth0", "xn-no-such-tap"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("network-interfaces[eth0].host_dev_name")
                && e.contains("xn-no-such-tap")
                && e.contains("does not exist"),
            "{e}"
        );
    }

    #[test]
    fn config_carries_every_field_to_the_device() {
        let mut i = iface("eth1", "tap1");
        i.allow_mac_spoofing = true;
        let c = net_config(&i);
        assert_eq!(c.iface_id, "eth1");
        assert_eq!(c.host_dev_name, "tap1");
        assert_eq!(c.guest_mac, Some([6, 0, 0, 0, 0, 1]));
        assert_eq!(c.mtu, Some(1500));
        assert!(c.allow_mac_spoofing);
    }

    #[test]
    fn patch_of_an_unknown_interface_is_refused() {
        let update = NetworkInterfaceUpdate {
            iface_id: "nope".into(),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        let e = update_net_device(&[], &update).unwrap_err().to_string();
        assert!(e.contains("network-interfaces[nope]"), "{e}");
    }
}
