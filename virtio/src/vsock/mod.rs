//! virtio-vsock (virtio 1.2 section 5.10), Firecracker's hybrid design over Unix sockets.
//!
//! - Host -> guest: xenia listens on `uds_path`; a host process connects and writes
//!   `CONNECT <port>\n`; xenia sends the guest a REQUEST from a host port allocated in
//!   [2^30, 2^31) and, once the guest answers RESPONSE, writes `OK <host_port>\n`; from then
//!   on the socket is the stream.
//! - Guest -> host: a REQUEST to CID 2 port P makes xenia connect (non-blocking) to
//!   `<uds_path>_<P>`; nobody listening (or a full backlog) answers the guest with RST.
//!
//! Files: `packet.rs` (the 44-byte header and its checks), `conn.rs` (one connection, credit
//! accounting), `unix.rs` (non-blocking accept/connect, the CONNECT line), `muxer.rs` (host
//! sockets on the `io` loop, timeouts), `queues.rs` (the tx queue, checked chains), `rx.rs` (the rx and event queues),
//! `persist.rs` (snapshot state).
//!
//! Limits: [`MAX_CONNECTIONS`] connections (host-initiated ones still sending their CONNECT
//! line count too); per connection at most [`conn::TX_BUF_SIZE`] bytes of guest data are held
//! for a slow host reader (the credit advertised), nothing the other way (host data is read
//! only when the guest has credit and an rx buffer); at most [`MAX_QUEUED_RSTS`] RSTs for
//! unknown connections wait for rx buffers (more are dropped and counted). A host that
//! sends no CONNECT line within [`HOST_LINE_TIMEOUT`], a guest that does not answer a
//! REQUEST within [`CONNECT_TIMEOUT`], and a close whose data the host does not take within
//! [`SHUTDOWN_TIMEOUT`] are given up (RST to the guest, socket closed).
//!
//! The socket file at `uds_path` stays when xenia exits (as with Firecracker); a later
//! xenia binding the same path replaces it once nobody listens there.

pub mod conn;
mod muxer;
pub mod packet;
mod persist;
mod queues;
mod rx;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_hostile;
pub mod unix;

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::active::{watch_fds, ActiveQueues, QueueWatch};
use crate::device::{read_config_space, ActivateContext, ActivateError, VirtioDevice};
use crate::features::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use conn::Conn;
use devices::log_limiter::{LogLimiter, GUEST_LOG_PERIOD};

pub use persist::{VsockState, VsockStateError};

/// virtio device id of a socket device.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// Descriptors per queue (rx, tx, event).
pub const VSOCK_QUEUE_SIZES: [u16; 3] = [256, 256, 16];
/// Most connections at once (Firecracker's limit).
pub const MAX_CONNECTIONS: usize = 1023;
/// Most RSTs for unknown connections waiting for rx buffers.
pub const MAX_QUEUED_RSTS: usize = 1024;
/// How long the guest has to answer a host-initiated REQUEST.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a host process has to send its `CONNECT <port>\n` line.
pub const HOST_LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a closing connection may take to hand its last guest bytes to the host.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// First host port handed to host-initiated connections (2^30); they stay below 2^31.
pub const HOST_PORT_FIRST: u32 = 1 << 30;

const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;

crate::device_counters!(VsockMetrics, VsockMetricsSnapshot, {
    activate_fails: "Activations refused (queue not ready).",
    cfg_fails: "Guest writes to the read-only config space.",
    rx_queue_event_count: "rx queue notifications (the guest gave receive buffers).",
    tx_queue_event_count: "tx queue notifications (the guest sent packets).",
    ev_queue_event_count: "event queue notifications.",
    rx_bytes_count: "Payload bytes delivered to the guest.",
    tx_bytes_count: "Payload bytes the guest sent.",
    rx_packets_count: "Packets delivered to the guest.",
    tx_packets_count: "Packets the guest sent.",
    conns_added: "Connections established or started.",
    conns_killed: "Connections reset by xenia (errors, timeouts, protocol violations).",
    conns_removed: "Connections gone, whatever the reason.",
    conn_event_fails: "Host socket events that could not be watched.",
    muxer_event_fails: "Failures to accept on the listening socket.",
    tx_flush_fails: "Failures writing buffered guest data to a host socket.",
    tx_write_fails: "Failures writing guest data to a host socket.",
    rx_read_fails: "Failures reading a host socket.",
    connect_fails: "Guest connections refused: nobody listening on uds_path_PORT, or busy.",
    connect_timeouts: "Host connections the guest did not answer, or that sent no CONNECT line.",
    host_line_fails: "Host connections closed for a malformed CONNECT line.",
    conn_limit_refusals: "Connections refused at the connection limit.",
    invalid_packets: "Guest packets refused: bad header, CIDs, type, op or length.",
    invalid_chains: "Descriptor chains refused: wrong direction, outside memory, too short, indirect.",
    unknown_conn_packets: "Guest packets for a connection that does not exist.",
    credit_violations: "Guest data beyond the credit advertised (connection reset).",
    rsts_dropped: "RSTs for unknown connections dropped because too many waited.",
    transport_resets: "TRANSPORT_RESET events delivered to the guest.",
    queue_errors: "Times a queue broke (the device then needs a reset).",
});

/// Errors from building the device (the VMM's messages say it is the vsock device).
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest_cid {0} is reserved (must be at least 3)")]
    Cid(u64),
    #[error("cannot create an EventFd or timerfd: {0}")]
    Fd(std::io::Error),
    #[error("cannot listen on uds_path {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What identifies a connection: (host-side port, guest port).
pub(crate) type ConnKey = (u32, u32);

/// A host process that connected to `uds_path` and has not finished its CONNECT line.
#[derive(Debug)]
pub(crate) struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: std::time::Instant,
    /// Watched by the loop (joins it at the next interest update).
    registered: bool,
}

/// The virtio socket device. Shared as `Arc<Mutex<Vsock>>` by the transport (vCPU threads)
/// and the `io` loop, which owns every host socket.
pub struct Vsock {
    cid: u64,
    uds_path: PathBuf,
    acked_features: u64,
    ctrl_evt: EventFd,
    timer: TimerFd,
    timer_armed: bool,
    active: Option<ActiveQueues>,
    watch: QueueWatch,
    broken: bool,
    metrics: Arc<VsockMetrics>,
    listener: UnixListener,
    conns: HashMap<ConnKey, Conn>,
    /// Socket fd -> its connection (fds are the event data of the sockets).
    by_fd: HashMap<RawFd, ConnKey>,
    pending_hosts: HashMap<RawFd, PendingHost>,
    /// Connections with something for the guest, in the order they asked.
    rx_list: VecDeque<ConnKey>,
    /// RSTs for connections that do not exist: (host port, guest port).
    rst_queue: VecDeque<ConnKey>,
    /// Connections whose epoll interest may have changed.
    dirty: Vec<ConnKey>,
    /// Sockets to take out of the loop and close (closed connections, pending hosts).
    retired: Vec<(UnixStream, bool)>,
    next_host_port: u32,
    /// A TRANSPORT_RESET event waits for an event-queue buffer.
    reset_event_pending: bool,
    /// Reused buffer for payloads.
    scratch: Vec<u8>,
    guest_log: LogLimiter,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("cid", &self.cid)
            .field("uds_path", &self.uds_path)
            .field("conns", &self.conns.len())
            .finish()
    }
}

// Event data: queues at QUEUE_DATA + index; sockets by fd with the top bit set.
const CTRL: u32 = 0;
const LISTENER: u32 = 1;
const TIMER: u32 = 2;
const QUEUE_DATA: u32 = 8;
const SOCKET_TAG: u32 = 1 << 31;

impl Vsock {
    /// Creates the device and its listening socket at `uds_path`. A socket file nobody
    /// listens on (left by a VMM that exited, e.g. the source of a snapshot) is replaced; a
    /// live one, or any other file, is an error.
    pub fn new(cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        if cid < 3 {
            return Err(VsockError::Cid(cid));
        }
        let listen_err = |source| VsockError::Listen {
            path: uds_path.to_owned(),
            source,
        };
        let listener = bind_replacing_stale(uds_path).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        Ok(Vsock {
            cid,
            uds_path: uds_path.to_owned(),
            acked_features: 0,
            ctrl_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::Fd)?,
            timer: TimerFd::new().map_err(|e| VsockError::Fd(e.into()))?,
            timer_armed: false,
            active: None,
            watch: QueueWatch::default(),
            broken: false,
            metrics: Arc::new(VsockMetrics::default()),
            listener,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            pending_hosts: HashMap::new(),
            rx_list: VecDeque::new(),
            rst_queue: VecDeque::new(),
            dirty: Vec::new(),
            retired: Vec::new(),
            next_host_port: HOST_PORT_FIRST,
            reset_event_pending: false,
            scratch: Vec::new(),
            guest_log: LogLimiter::new(GUEST_LOG_PERIOD),
        })
    }

    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }

    pub fn guest_cid(&self) -> u64 {
        self.cid
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Connections open now (established or being set up).
    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.pending_hosts.len()
    }

    pub(crate) fn queue_broken(&mut self, why: &str) {
        if let Some(suppressed) = self.guest_log.check() {
            log::error!("virtio-vsock: queue broken: {why} ({suppressed} more suppressed)");
        }
        VsockMetrics::inc(&self.metrics.queue_errors);
        self.broken = true;
        if let Some(a) = &self.active {
            a.interrupt.signal_needs_reset();
        }
    }

    fn wake_loop(&self) {
        if let Err(e) = self.ctrl_evt.write(1) {
            log::error!("virtio-vsock: cannot wake the io loop: {e}");
        }
    }

    /// Everything that follows an event: packets owed to the guest go into rx buffers, the
    /// sockets' interests are brought up to date.
    fn after_event(&mut self, ops: &mut EventOps) {
        self.process_rx();
        self.process_event_queue();
        self.sync_interests(ops);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &VSOCK_QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        (1u64 << VIRTIO_F_VERSION_1) | (1u64 << VIRTIO_RING_F_EVENT_IDX)
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // guest_cid, le64.
        read_config_space(&self.cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        VsockMetrics::inc(&self.metrics.cfg_fails);
        log::debug!("virtio-vsock: ignored config write at {offset:#x}");
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let active = ActiveQueues::activate(&self.active, ctx, 3, &self.metrics.activate_fails)?;
        self.active = Some(active);
        self.broken = false;
        self.ctrl_evt.write(1).map_err(ActivateError::Notify)
    }

    fn reset(&mut self) {
        self.watch.deactivate(&mut self.active);
        // The guest forgot every connection: so do we (the sockets close on the loop).
        self.kill_all();
        self.reset_event_pending = false;
        self.acked_features = 0;
        self.broken = false;
        self.wake_loop();
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        watch_fds(
            ops,
            &[
                (self.ctrl_evt.as_raw_fd(), CTRL),
                (self.listener.as_raw_fd(), LISTENER),
                (self.timer.as_raw_fd(), TIMER),
            ],
            "virtio-vsock",
        );
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let data = events.data();
        match data {
            CTRL => {
                let _ = self.ctrl_evt.read();
                if let Err(why) =
                    self.watch
                        .sync(ops, self.active.as_ref(), QUEUE_DATA, "virtio-vsock")
                {
                    self.queue_broken(&why);
                }
                // Whatever the guest queued while we were away.
                self.process_tx();
            }
            LISTENER => self.accept_hosts(),
            TIMER => {
                let _ = self.timer.wait();
                self.expire_deadlines();
            }
            d if d & SOCKET_TAG != 0 => {
                let fd = (d & !SOCKET_TAG) as RawFd;
                self.socket_event(fd, events.event_set());
            }
            d if (QUEUE_DATA..QUEUE_DATA + 3).contains(&d) => {
                let index = (d - QUEUE_DATA) as usize;
                if let Some(a) = &self.active {
                    let _ = a.evts[index].read();
                }
                match index {
                    RXQ => {
                        VsockMetrics::inc(&self.metrics.rx_queue_event_count);
                        // New buffers: the ring is looked at whenever there is something to
                        // deliver, so the guest need not notify again until xenia runs out
                        // (process_rx re-enables notifications then).
                        self.quiet_rx();
                    }
                    TXQ => {
                        VsockMetrics::inc(&self.metrics.tx_queue_event_count);
                        self.process_tx();
                    }
                    _ => VsockMetrics::inc(&self.metrics.ev_queue_event_count),
                }
            }
            other => log::warn!("virtio-vsock: unexpected event data {other}"),
        }
        self.after_event(ops);
    }
}

/// Binds a listening socket at `path`; a socket file there that refuses connections is
/// stale and is replaced. Runs on the VMM thread before its seccomp filter (build time).
fn bind_replacing_stale(path: &Path) -> std::io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let is_socket = std::fs::symlink_metadata(path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            let stale = is_socket
                && unix::connect_nonblocking(path)
                    .err()
                    .and_then(|e| e.raw_os_error())
                    == Some(libc::ECONNREFUSED);
            if !stale {
                return Err(e);
            }
            log::info!("vsock: replacing the stale socket {}", path.display());
            std::fs::remove_file(path)?;
            UnixListener::bind(path)
        }
        r => r,
    }
}
