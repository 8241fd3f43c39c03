//! virtio-net over a host tap device.
//!
//! - [`tap`]: the backend (`/dev/net/tun`, vnet header, offloads, readv/writev).
//! - [`chain`]: guest descriptor validation; [`iovec`]: zero-copy iovec lists.
//! - [`device`]: [`Net`], built from a [`NetConfig`]; rx/tx run on the io loop.
//! - [`mac_filter`]: anti-spoofing; [`metrics`]: counters; `persist`: snapshot state.
//! - [`mmds`]: hands frames for the metadata address to a [`FrameEndpoint`] (the VMM wires
//!   the `mmds` crate's) and its answers to the guest, instead of the tap.

pub mod chain;
pub mod device;
mod event_handler;
pub mod iovec;
pub mod mac_filter;
pub mod metrics;
pub mod mmds;
mod persist;
mod rx;
pub mod tap;
pub mod tx;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_alloc;
#[cfg(test)]
mod tests_hardening;
#[cfg(test)]
mod tests_mmds;

#[cfg(test)]
pub(crate) mod test_utils;

pub use device::{Net, NetConfig, NetError, NET_QUEUE_SIZE};
pub use metrics::{NetMetrics, NetMetricsSnapshot};
pub use mmds::{FrameEndpoint, ENDPOINT_HEAD_LEN};
pub use persist::{NetState, NetStateError};
pub use tap::{Tap, TapError};

/// The guest memory the device reads and writes.
pub(crate) type Mem = crate::GuestMemoryMmap;

/// Size of `struct virtio_net_hdr_v1` (with `num_buffers`): every frame on the queues and on
/// the tap fd starts with one.
pub const VNET_HDR_LEN: usize = 12;
/// Largest Ethernet frame we move: a 64 KiB GSO frame plus Ethernet and VLAN headers.
pub const MAX_FRAME_LEN: usize = 65_550;
/// Largest buffer chain content: header plus frame.
pub const MAX_BUFFER_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// Smallest tx content: a header and an Ethernet header.
pub const MIN_TX_LEN: usize = VNET_HDR_LEN + 14;
