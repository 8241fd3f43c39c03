//! The microVM metadata service (MMDS), Firecracker-compatible.
//!
//! - [`store`]: the JSON document, merge patches, the size limit, IMDS text.
//! - [`token`]: V2 session tokens (an AEAD over the expiry, per-VM random key).
//! - [`http`]: the guest's requests and our responses.
//! - [`service`]: [`Mmds`], the service one VM's API and net devices share.
//! - [`stack`]: [`MmdsStack`], the per-interface endpoint: answers ARP for the MMDS address
//!   and terminates TCP port 80 (smoltcp) for it; the virtio-net device hands it the guest's
//!   frames for that address and takes the frames it produces.
//! - [`metrics`]: the `mmds` counters.
//!
//! No virtio dependency: the net device consults the stack, not the other way round.

pub mod http;
pub mod metrics;
pub mod service;
pub mod stack;
pub mod store;
pub mod token;

pub use service::{Mmds, Version, TOKEN_PATH};
pub use stack::{MmdsStack, StackConfig};
pub use store::StoreError;

/// The default MMDS address (EC2's).
pub const DEFAULT_IPV4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 169, 254);
