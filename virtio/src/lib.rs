//! virtio devices and the virtio-mmio transport.
pub mod net;
