//! One vsock stream connection: its host Unix socket, what it still owes the guest, and the
//! credit accounting of both directions (virtio 1.2 section 5.10.6.3).
//!
//! Guest -> host: we advertise [`TX_BUF_SIZE`] as `buf_alloc` and the bytes written to the
//! host socket as `fwd_cnt`; what the socket does not take at once waits in `tx_buf`, which
//! never grows beyond `buf_alloc` (a guest that sends more than its credit is reset, not
//! buffered). Host -> guest: we read from the socket only as much as the guest's own
//! `buf_alloc - (tx_cnt - peer_fwd_cnt)` allows, straight into its rx buffer: nothing is
//! buffered on that side at all.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// Bytes of guest data xenia holds for a slow host reader, per connection (the `buf_alloc`
/// it advertises; Firecracker's value).
pub const TX_BUF_SIZE: u32 = 256 << 10;
/// A credit update is sent once the host has taken this many bytes since the last one the
/// guest heard of (so a guest that used all of its credit always hears again).
pub const CREDIT_UPDATE_THRESHOLD: u32 = TX_BUF_SIZE / 2;

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST sent to the guest, waiting for its RESPONSE.
    LocalInit,
    /// Both sides may send.
    Established,
    /// The guest shut down both directions: the rest of `tx_buf` goes to the host, then RST.
    Closing,
}

/// Control packets the connection still has to send to the guest (data is sent whenever
/// `want_read` and credit allow).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PendingRx {
    pub request: bool,
    pub response: bool,
    pub credit_update: bool,
    pub credit_request: bool,
    /// SHUTDOWN flags to send (0 = none).
    pub shutdown: u32,
}

impl PendingRx {
    pub fn any(&self) -> bool {
        self.request
            || self.response
            || self.credit_update
            || self.credit_request
            || self.shutdown != 0
    }
}

/// Result of flushing `tx_buf` to the host.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    /// Everything went out.
    Done,
    /// The socket is full; wait for it to become writable.
    Blocked,
}

#[derive(Debug)]
pub struct Conn {
    pub stream: UnixStream,
    /// Host-side port (guest's `dst_port` for guest-initiated connections, the allocated
    /// port in [2^30, 2^31) for host-initiated ones).
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
    pub state: ConnState,
    pub pending: PendingRx,
    /// In the device's list of connections with something for the guest.
    pub in_rx_list: bool,
    /// The host socket may have data (an IN event was seen, or it hung up): read it when the
    /// guest has credit and an rx buffer.
    pub want_read: bool,
    /// The host's side sent EOF (read returned 0).
    pub host_eof: bool,
    /// The socket hung up or failed: no longer watched, drained by reading.
    pub hup: bool,
    /// The guest said it sends no more (SHUTDOWN with SEND).
    pub guest_shut_send: bool,
    /// The guest said it receives no more (SHUTDOWN with RCV).
    pub guest_shut_rcv: bool,
    /// Guest bytes (and the `OK <port>\n` line at its head) waiting for the host socket.
    pub tx_buf: VecDeque<u8>,
    /// Bytes at the head of `tx_buf` that are xenia's own (the OK line), not guest credit.
    pub own_bytes: usize,
    /// Guest bytes written to the host socket.
    pub fwd_cnt: u32,
    /// `fwd_cnt` as the guest last heard it.
    pub last_fwd_cnt_sent: u32,
    /// Guest bytes received (RW payloads).
    pub rx_cnt: u32,
    /// Bytes sent to the guest.
    pub tx_cnt: u32,
    /// The guest's receive buffer and how much of it it consumed (as it last said).
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// When an unanswered REQUEST or an unfinished close gives up.
    pub deadline: Option<Instant>,
    /// The epoll interest registered for `stream` (`None`: not in the loop).
    pub registered: Option<event_manager::EventSet>,
}

impl Conn {
    pub fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: ConnState) -> Self {
        Conn {
            stream,
            local_port,
            peer_port,
            state,
            pending: PendingRx::default(),
            in_rx_list: false,
            want_read: false,
            host_eof: false,
            hup: false,
            guest_shut_send: false,
            guest_shut_rcv: false,
            tx_buf: VecDeque::new(),
            own_bytes: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            rx_cnt: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            deadline: None,
            registered: None,
        }
    }

    /// Bytes the guest can still take (0 when it claims more than it could have: a guest
    /// lying about its counters only stops its own connection).
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Records the credit fields of a packet from the guest.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// Guest bytes held for the host.
    pub fn guest_bytes_buffered(&self) -> usize {
        self.tx_buf.len() - self.own_bytes
    }

    /// Whether the host socket should be read now (data for the guest).
    pub fn can_send_data(&self) -> bool {
        self.state == ConnState::Established
            && self.want_read
            && !self.host_eof
            && !self.guest_shut_rcv
            && self.peer_credit() > 0
    }

    /// The epoll interest this connection needs (`None`: keep it out of the loop).
    pub fn desired_interest(&self) -> Option<event_manager::EventSet> {
        use event_manager::EventSet;
        if self.hup {
            return None;
        }
        let mut e = EventSet::empty();
        if self.state == ConnState::Established
            && !self.want_read
            && !self.host_eof
            && !self.guest_shut_rcv
            && self.peer_credit() > 0
        {
            e |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            e |= EventSet::OUT;
        }
        Some(e)
    }

    /// Queues xenia's own bytes for the host ahead of any guest data (the `OK` line).
    pub fn push_own(&mut self, bytes: &[u8]) {
        self.tx_buf.extend(bytes);
        self.own_bytes += bytes.len();
    }

    /// Whether `len` more guest bytes fit the buffer the guest was promised.
    pub fn fits(&self, len: usize) -> bool {
        self.guest_bytes_buffered() + len <= TX_BUF_SIZE as usize
    }

    /// Takes guest data: written straight to the host when nothing waits before it, the
    /// rest buffered (the caller checked [`Self::fits`]). Errors are the socket's.
    pub fn send_to_host(&mut self, data: &[u8]) -> io::Result<()> {
        self.rx_cnt = self.rx_cnt.wrapping_add(data.len() as u32);
        let mut written = 0;
        if self.tx_buf.is_empty() {
            written = write_some(&mut self.stream, data)?;
            self.account_flushed(written);
        }
        self.tx_buf.extend(&data[written..]);
        Ok(())
    }

    /// Writes as much of `tx_buf` as the socket takes.
    pub fn flush(&mut self) -> io::Result<Flush> {
        while !self.tx_buf.is_empty() {
            let (a, _) = self.tx_buf.as_slices();
            let n = write_some(&mut self.stream, a)?;
            if n == 0 {
                return Ok(Flush::Blocked);
            }
            self.tx_buf.drain(..n);
            self.account_flushed(n);
        }
        Ok(Flush::Done)
    }

    /// `n` bytes left `tx_buf` (or went straight out): guest bytes count towards `fwd_cnt`.
    fn account_flushed(&mut self, n: usize) {
        let own = n.min(self.own_bytes);
        self.own_bytes -= own;
        let guest = (n - own) as u32;
        self.fwd_cnt = self.fwd_cnt.wrapping_add(guest);
        if self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.pending.credit_update = true;
        }
    }
}

/// One non-blocking write; a full socket is 0 bytes, not an error.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    if data.is_empty() {
        return Ok(0);
    }
    loop {
        match stream.write(data) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pair() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Conn::new(a, 1024, 5000, ConnState::Established), b)
    }

    #[test]
    fn peer_credit_follows_the_guest_counters_and_lies_give_none() {
        let (mut c, _h) = pair();
        assert_eq!(c.peer_credit(), 0);
        c.update_peer_credit(4096, 0);
        assert_eq!(c.peer_credit(), 4096);
        c.tx_cnt = 1000;
        assert_eq!(c.peer_credit(), 3096);
        c.update_peer_credit(4096, 1000);
        assert_eq!(c.peer_credit(), 4096);
        // fwd_cnt ahead of what was sent: the wrapped in-flight count is huge, credit 0.
        c.update_peer_credit(u32::MAX, 5000);
        assert_eq!(c.peer_credit(), u32::MAX - (1000u32.wrapping_sub(5000)));
        c.update_peer_credit(4096, 5000);
        assert_eq!(c.peer_credit(), 0);
        // Counters wrap around 2^32.
        c.tx_cnt = 10;
        c.update_peer_credit(100, u32::MAX - 9);
        assert_eq!(c.peer_credit(), 80);
    }

    #[test]
    fn guest_data_beyond_the_buffer_does_not_fit_and_a_slow_host_fills_it_only() {
        let (mut c, mut host) = pair();
        // Fill the socket so that nothing more goes straight out.
        let big = vec![7u8; 1 << 20];
        while c.stream.write(&big).is_ok() {}
        assert!(c.fits(TX_BUF_SIZE as usize));
        c.send_to_host(&big[..TX_BUF_SIZE as usize]).unwrap();
        assert_eq!(c.guest_bytes_buffered(), TX_BUF_SIZE as usize);
        assert!(!c.fits(1));
        assert_eq!(c.fwd_cnt, 0);
        // The host reads: the buffer drains and fwd_cnt counts only guest bytes.
        let mut sink = vec![0u8; 1 << 20];
        let mut flushed = Flush::Blocked;
        for _ in 0..64 {
            while let Ok(n) = {
                host.set_nonblocking(true).unwrap();
                host.read(&mut sink)
            } {
                if n == 0 {
                    break;
                }
            }
            flushed = c.flush().unwrap();
            if flushed == Flush::Done {
                break;
            }
        }
        assert_eq!(flushed, Flush::Done);
        assert_eq!(c.fwd_cnt, TX_BUF_SIZE);
        assert!(c.pending.credit_update);
    }

    #[test]
    fn the_ok_line_goes_first_and_is_not_guest_credit() {
        let (mut c, mut host) = pair();
        c.push_own(b"OK 1073741824\n");
        c.flush().unwrap();
        c.send_to_host(b"data").unwrap();
        assert_eq!(c.fwd_cnt, 4);
        assert_eq!(c.own_bytes, 0);
        let mut b = [0u8; 18];
        host.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"OK 1073741824\ndata");
    }

    #[test]
    fn interest_follows_state_credit_and_buffer() {
        use event_manager::EventSet;
        let (mut c, _h) = pair();
        assert_eq!(c.desired_interest(), Some(EventSet::empty()));
        c.update_peer_credit(4096, 0);
        assert_eq!(c.desired_interest(), Some(EventSet::IN));
        c.want_read = true;
        assert_eq!(c.desired_interest(), Some(EventSet::empty()));
        assert!(c.can_send_data());
        c.tx_buf.push_back(1);
        assert_eq!(c.desired_interest(), Some(EventSet::OUT));
        c.hup = true;
        assert_eq!(c.desired_interest(), None);
    }
}
