//! virtio-vsock (virtio 1.2 section 5.10), Firecracker's hybrid design over Unix sockets.
//!
//! Work in progress and deliberately not wired into the VMM or the API: only the packet
//! header codec and its validation exist so far (`packet.rs`). What is left: the device
//! (rx, tx and event queues, config space `guest_cid`), the connection state machine with
//! credit-based flow control, the Unix-socket muxer (`CONNECT <port>\n` / `OK <port>\n`,
//! `<uds_path>_<port>` for guest-initiated connections), `PUT /vsock`, snapshot state
//! (connections reset with a transport-reset event), the probe driver and the tests.

pub mod packet;
