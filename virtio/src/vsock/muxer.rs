//! The host side on the `io` loop: the listening socket, host processes sending their
//! `CONNECT` line, connection sockets (readable: data for the guest; writable: buffered guest
//! data), timeouts, and the bookkeeping that keeps epoll interests in step with each
//! connection's state (level-triggered: a socket is watched for IN only while the guest has
//! credit and xenia is not already waiting to read it, for OUT only while data waits).

use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events};

use super::conn::{Conn, ConnState, Flush};
use super::unix::{self, parse_connect_line, MAX_CONNECT_LINE};
use super::{
    ConnKey, PendingHost, Vsock, VsockMetrics, CONNECT_TIMEOUT, HOST_LINE_TIMEOUT, HOST_PORT_FIRST,
    MAX_CONNECTIONS, MAX_QUEUED_RSTS, SOCKET_TAG,
};

/// How often deadlines are checked while any is set.
const TICK: Duration = Duration::from_millis(100);

fn socket_data(fd: RawFd) -> u32 {
    SOCKET_TAG | (fd as u32)
}

impl Vsock {
    /// Accepts every host process waiting on `uds_path`.
    pub(crate) fn accept_hosts(&mut self) {
        loop {
            match unix::accept_nonblocking(&self.listener) {
                Ok(stream) => {
                    if self.connection_count() >= MAX_CONNECTIONS {
                        VsockMetrics::inc(&self.metrics.conn_limit_refusals);
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    self.pending_hosts.insert(
                        fd,
                        PendingHost {
                            stream,
                            line: Vec::new(),
                            deadline: Instant::now() + HOST_LINE_TIMEOUT,
                            registered: false,
                        },
                    );
                    self.arm_timer();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    VsockMetrics::inc(&self.metrics.muxer_event_fails);
                    log::warn!("virtio-vsock: accept on {}: {e}", self.uds_path.display());
                    return;
                }
            }
        }
    }

    /// An event on a host socket (`fd` may already be gone: events of one epoll round can
    /// outlive the socket they were for).
    pub(crate) fn socket_event(&mut self, fd: RawFd, set: EventSet) {
        if self.pending_hosts.contains_key(&fd) {
            self.read_host_line(fd);
            return;
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            // Out of the loop from now on; what is left to read is read until EOF.
            c.hup = true;
            c.want_read = true;
        }
        if set.contains(EventSet::IN) {
            c.want_read = true;
        }
        if set.contains(EventSet::OUT) || c.hup {
            self.flush_conn(key);
        }
        self.touch(key);
    }

    /// Writes what waits for the host; finishes a close or a half-close once it is out.
    pub(crate) fn flush_conn(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        match c.flush() {
            Ok(Flush::Blocked) => {}
            Ok(Flush::Done) => {
                if c.state == ConnState::Closing {
                    self.kill(key, true, false);
                } else if c.guest_shut_send {
                    let _ = c.stream.shutdown(Shutdown::Write);
                }
            }
            Err(e) => {
                log::debug!("virtio-vsock: write to host port {}: {e}", key.0);
                VsockMetrics::inc(&self.metrics.tx_flush_fails);
                self.kill(key, true, true);
            }
        }
    }

    /// Reads a host process's `CONNECT <port>\n`, one byte at a time so that nothing after
    /// the line is taken from the stream; on a whole line the guest is sent a REQUEST.
    fn read_host_line(&mut self, fd: RawFd) {
        let Some(p) = self.pending_hosts.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let outcome = loop {
            match p.stream.read(&mut byte) {
                Ok(0) => break Err(None),
                Ok(_) => {
                    p.line.push(byte[0]);
                    match parse_connect_line(&p.line) {
                        Ok(None) => continue,
                        Ok(Some((port, _))) => break Ok(Some(port)),
                        Err(e) => break Err(Some(e)),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break Err(None),
            }
        };
        debug_assert!(p.line.len() <= MAX_CONNECT_LINE);
        match outcome {
            Ok(None) => {}
            Ok(Some(port)) => {
                let Some(p) = self.pending_hosts.remove(&fd) else {
                    return;
                };
                self.start_host_conn(p, port);
            }
            Err(why) => {
                if let Some(e) = why {
                    VsockMetrics::inc(&self.metrics.host_line_fails);
                    log::debug!("virtio-vsock: host connection refused: {e}");
                }
                if let Some(p) = self.pending_hosts.remove(&fd) {
                    self.retired.push((p.stream, p.registered));
                }
            }
        }
    }

    /// A host process asked for guest port `port`: REQUEST from a fresh host port.
    fn start_host_conn(&mut self, p: PendingHost, port: u32) {
        if self.active.is_none() {
            // No driver to ask: the host sees its socket close without an OK.
            self.retired.push((p.stream, p.registered));
            return;
        }
        let Some(local) = self.alloc_host_port(port) else {
            VsockMetrics::inc(&self.metrics.conn_limit_refusals);
            self.retired.push((p.stream, p.registered));
            return;
        };
        let key = (local, port);
        let mut c = Conn::new(p.stream, local, port, ConnState::LocalInit);
        c.registered = p.registered.then_some(EventSet::IN);
        c.pending.request = true;
        c.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
        self.insert_conn(key, c);
        self.arm_timer();
    }

    /// A host port in [2^30, 2^31) not used with guest port `peer`.
    fn alloc_host_port(&mut self, peer: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_host_port;
            self.next_host_port = if port >= (1 << 31) - 1 {
                HOST_PORT_FIRST
            } else {
                port + 1
            };
            if !self.conns.contains_key(&(port, peer)) {
                return Some(port);
            }
        }
        None
    }

    /// A guest REQUEST to host port `key.0`: connect to `<uds_path>_<port>` without waiting.
    pub(crate) fn guest_connect(&mut self, key: ConnKey, buf_alloc: u32, fwd_cnt: u32) {
        if self.conns.contains_key(&key) {
            // A second REQUEST for a live connection: the guest lost track; start over.
            self.kill(key, true, true);
            return;
        }
        if self.connection_count() >= MAX_CONNECTIONS {
            VsockMetrics::inc(&self.metrics.conn_limit_refusals);
            self.queue_rst(key);
            return;
        }
        let mut path = self.uds_path.as_os_str().as_bytes().to_vec();
        path.extend_from_slice(format!("_{}", key.0).as_bytes());
        let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&path));
        match unix::connect_nonblocking(&path) {
            Ok(stream) => {
                let mut c = Conn::new(stream, key.0, key.1, ConnState::Established);
                c.update_peer_credit(buf_alloc, fwd_cnt);
                c.pending.response = true;
                self.insert_conn(key, c);
            }
            Err(e) => {
                log::debug!("virtio-vsock: guest connect to {}: {e}", path.display());
                VsockMetrics::inc(&self.metrics.connect_fails);
                self.queue_rst(key);
            }
        }
    }

    fn insert_conn(&mut self, key: ConnKey, c: Conn) {
        self.by_fd.insert(c.stream.as_raw_fd(), key);
        self.conns.insert(key, c);
        VsockMetrics::inc(&self.metrics.conns_added);
        self.touch(key);
    }

    /// Puts `key` in the rx list if it owes the guest something, and marks its interest for
    /// an update.
    pub(crate) fn touch(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            if !c.in_rx_list && (c.pending.any() || c.can_send_data()) {
                c.in_rx_list = true;
                self.rx_list.push_back(key);
            }
            self.dirty.push(key);
        }
    }

    /// An RST for a connection that is gone or never was (bounded: a flood is dropped).
    pub(crate) fn queue_rst(&mut self, key: ConnKey) {
        if self.rst_queue.len() >= MAX_QUEUED_RSTS {
            VsockMetrics::inc(&self.metrics.rsts_dropped);
            return;
        }
        self.rst_queue.push_back(key);
    }

    /// Ends a connection: the socket leaves the loop and closes; `rst` tells the guest,
    /// `killed` counts it as xenia's doing.
    pub(crate) fn kill(&mut self, key: ConnKey, rst: bool, killed: bool) {
        let Some(c) = self.conns.remove(&key) else {
            return;
        };
        self.by_fd.remove(&c.stream.as_raw_fd());
        self.retired.push((c.stream, c.registered.is_some()));
        if killed {
            VsockMetrics::inc(&self.metrics.conns_killed);
        }
        VsockMetrics::inc(&self.metrics.conns_removed);
        if rst {
            self.queue_rst(key);
        }
    }

    /// Drops every connection without telling the guest (device reset, snapshot: the guest
    /// hears of it through a reset of its own or a TRANSPORT_RESET event).
    pub(crate) fn kill_all(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.kill(key, false, true);
        }
        for (_, p) in self.pending_hosts.drain() {
            self.retired.push((p.stream, p.registered));
        }
        self.rx_list.clear();
        self.rst_queue.clear();
    }

    pub(crate) fn arm_timer(&mut self) {
        if self.timer_armed {
            return;
        }
        match self.timer.reset(TICK, Some(TICK)) {
            Ok(()) => self.timer_armed = true,
            Err(e) => log::error!("virtio-vsock: cannot arm the timeout timer: {e}"),
        }
    }

    /// Gives up on host processes without a CONNECT line, REQUESTs the guest did not answer
    /// and closes the host did not finish taking.
    pub(crate) fn expire_deadlines(&mut self) {
        let now = Instant::now();
        let late: Vec<RawFd> = self
            .pending_hosts
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in late {
            if let Some(p) = self.pending_hosts.remove(&fd) {
                VsockMetrics::inc(&self.metrics.connect_timeouts);
                self.retired.push((p.stream, p.registered));
            }
        }
        let late: Vec<(ConnKey, ConnState)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(&k, c)| (k, c.state))
            .collect();
        for (key, state) in late {
            if state == ConnState::LocalInit {
                VsockMetrics::inc(&self.metrics.connect_timeouts);
            }
            self.kill(key, true, true);
        }
        let waiting =
            !self.pending_hosts.is_empty() || self.conns.values().any(|c| c.deadline.is_some());
        if !waiting && self.timer_armed {
            if let Err(e) = self.timer.clear() {
                log::warn!("virtio-vsock: cannot stop the timeout timer: {e}");
            }
            self.timer_armed = false;
        }
    }

    /// Brings the loop's interests up to date: closed sockets leave it, new ones join, the
    /// others watch what their connection needs now.
    pub(crate) fn sync_interests(&mut self, ops: &mut EventOps) {
        for (stream, registered) in self.retired.drain(..) {
            if registered {
                let _ = ops.remove(Events::empty_raw(stream.as_raw_fd()));
            }
        }
        for (&fd, p) in self.pending_hosts.iter_mut() {
            if !p.registered {
                match ops.add(Events::with_data_raw(fd, socket_data(fd), EventSet::IN)) {
                    Ok(()) => p.registered = true,
                    Err(e) => {
                        VsockMetrics::inc(&self.metrics.conn_event_fails);
                        log::warn!("virtio-vsock: cannot watch a host socket: {e:?}");
                    }
                }
            }
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for key in dirty.drain(..) {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            let fd = c.stream.as_raw_fd();
            let want = c.desired_interest();
            let result = match (c.registered, want) {
                (None, Some(set)) => ops.add(Events::with_data_raw(fd, socket_data(fd), set)),
                (Some(old), Some(set)) if old != set => {
                    ops.modify(Events::with_data_raw(fd, socket_data(fd), set))
                }
                (Some(_), None) => ops.remove(Events::empty_raw(fd)),
                _ => Ok(()),
            };
            match result {
                Ok(()) => c.registered = want,
                Err(e) => {
                    VsockMetrics::inc(&self.metrics.conn_event_fails);
                    log::warn!("virtio-vsock: cannot watch host port {}: {e:?}", key.0);
                    self.kill(key, true, true);
                }
            }
        }
        // Keep the allocation for the next round.
        self.dirty = dirty;
    }
}
