//! One client connection: its non-blocking stream, bounded read buffer and pending output.

use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::http::{Request, Response};
use crate::parse::{parse_request, Limits, Parsed};

/// Bytes read from the socket per `read` call.
const READ_CHUNK: usize = 4096;
/// Bytes read from one connection per wake-up, so one flooding client cannot starve others.
const READ_BUDGET: usize = 64 * 1024;
/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 \r\n\r\n";

pub(crate) struct Connection {
    stream: UnixStream,
    /// Received bytes not yet framed into a request. Bounded by `Limits` (see `read_cap`).
    inbuf: Vec<u8>,
    /// Response bytes not yet written; `out_pos` of them are already sent.
    outbuf: Vec<u8>,
    out_pos: usize,
    /// An answer said `Connection: close`: close once `outbuf` is drained.
    closing: bool,
    /// The peer shut its writing side (read returned 0).
    peer_closed: bool,
    /// `100 Continue` was sent for the request being received.
    continue_sent: bool,
    /// Logical time of the last event, for least-recently-used eviction.
    pub(crate) last_active: u64,
    /// When the first byte of the request being received arrived (None: nothing buffered).
    /// Unlike `last_active`, trickling bytes does not move it: it bounds the whole request.
    request_started: Option<Instant>,
    /// When pending output was queued or last made progress (None: nothing to send).
    output_since: Option<Instant>,
    /// Whether epoll currently watches this connection for reading (else for writing).
    pub(crate) watching_input: bool,
}

/// See [`Connection::unread`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unread {
    Nothing,
    Data,
    HungUp,
}

impl Connection {
    pub(crate) fn new(stream: UnixStream, now: u64) -> Connection {
        Connection {
            stream,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            out_pos: 0,
            closing: false,
            peer_closed: false,
            continue_sent: false,
            last_active: now,
            request_started: None,
            output_since: None,
            watching_input: true,
        }
    }

    pub(crate) fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// No partial request buffered and nothing left to send: safe to evict.
    pub(crate) fn is_idle(&self) -> bool {
        self.inbuf.is_empty() && !self.has_pending_output()
    }

    /// When the request being received started arriving, if one is partly buffered and the
    /// connection is waiting for its client (not for us to drain output).
    pub(crate) fn request_started(&self) -> Option<Instant> {
        if self.has_pending_output() {
            None
        } else {
            self.request_started
        }
    }

    /// The instant past which this connection has held its slot too long without finishing:
    /// a request must arrive whole within `timeout` of its first byte, and pending output
    /// must make progress at least every `timeout`. An idle connection has no deadline.
    pub(crate) fn deadline(&self, timeout: Duration) -> Option<Instant> {
        let since = if self.has_pending_output() {
            self.output_since
        } else {
            self.request_started
        };
        since.map(|t| t + timeout)
    }

    /// Called once the deadline has passed: answers a half-received request with a 400 (best
    /// effort, without blocking) so that the client learns why the connection goes away.
    pub(crate) fn expire(&mut self, timeout: Duration) {
        if !self.has_pending_output() && !self.closing {
            let fault = format!(
                "Request not received in full within {} ms.",
                timeout.as_millis()
            );
            self.inbuf.clear();
            self.queue(&Response::fault(400, &fault), false);
            let _ = self.flush();
        }
    }

    /// What the socket holds that the server has not read yet. A burst of connections can
    /// be accepted before any of them is read: this tells a client whose request is waiting
    /// from one that hung up without a word.
    pub(crate) fn unread(&self) -> Unread {
        let mut pfd = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: poll(2) on one pollfd that lives on this stack frame, with a zero timeout;
        // the fd is a socket this connection owns.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n <= 0 {
            return Unread::Nothing;
        }
        // POLLRDHUP is set once the peer shut its side, even with bytes still unread: a
        // client that hung up cannot read an answer anyway.
        if pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            Unread::HungUp
        } else if pfd.revents & libc::POLLIN != 0 {
            Unread::Data
        } else {
            Unread::Nothing
        }
    }

    pub(crate) fn has_pending_output(&self) -> bool {
        self.out_pos < self.outbuf.len()
    }

    /// The connection has nothing more to do and can be dropped.
    pub(crate) fn is_done(&self) -> bool {
        !self.has_pending_output() && (self.closing || self.peer_closed)
    }

    /// Whether epoll should watch for input (true) or for writability (false).
    pub(crate) fn wants_input(&self) -> bool {
        !self.has_pending_output() && !self.peer_closed && !self.closing
    }

    /// Reads what the socket has, up to a per-wake-up budget and the buffer cap.
    pub(crate) fn read_available(&mut self, limits: &Limits) -> io::Result<()> {
        // A full request fits in headers + payload; past that the parser reports an error,
        // so the buffer never needs to hold more.
        let cap = limits
            .max_header_bytes
            .saturating_add(limits.max_payload)
            .saturating_add(READ_CHUNK);
        let mut budget = READ_BUDGET;
        let mut chunk = [0u8; READ_CHUNK];
        while budget > 0 && self.inbuf.len() < cap && !self.peer_closed {
            let want = READ_CHUNK.min(cap - self.inbuf.len()).min(budget);
            match self.stream.read(&mut chunk[..want]) {
                Ok(0) => self.peer_closed = true,
                Ok(n) => {
                    self.inbuf.extend_from_slice(&chunk[..n]);
                    budget = budget.saturating_sub(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Answers buffered requests one at a time, in order, writing each answer before
    /// framing the next one (so a client that never reads holds at most one answer here).
    pub(crate) fn service(
        &mut self,
        limits: &Limits,
        handler: &mut dyn FnMut(Request) -> Response,
    ) -> io::Result<()> {
        let result = self.service_inner(limits, handler);
        // Start the request clock on the first byte of a request; a consumed request stops it.
        if self.inbuf.is_empty() {
            self.request_started = None;
        } else if self.request_started.is_none() {
            self.request_started = Some(Instant::now());
        }
        result
    }

    fn service_inner(
        &mut self,
        limits: &Limits,
        handler: &mut dyn FnMut(Request) -> Response,
    ) -> io::Result<()> {
        loop {
            // Finish the previous answer first: a drained socket may have requests queued
            // behind it in `inbuf` that no new input event will announce.
            self.flush()?;
            if self.has_pending_output() || self.closing {
                return Ok(());
            }
            if !self.process_one(limits, handler) {
                // A `100 Continue` may have been queued.
                return self.flush();
            }
        }
    }

    /// Frames and answers at most one request. Returns whether a request was consumed.
    fn process_one(
        &mut self,
        limits: &Limits,
        handler: &mut dyn FnMut(Request) -> Response,
    ) -> bool {
        if self.closing || self.has_pending_output() || self.inbuf.is_empty() {
            return false;
        }
        match parse_request(&self.inbuf, limits) {
            Parsed::Complete {
                request,
                consumed,
                keep_alive,
            } => {
                self.inbuf.drain(..consumed);
                self.continue_sent = false;
                self.request_started = None;
                let response = handler(request);
                self.queue(&response, keep_alive);
                true
            }
            Parsed::Partial { expect_continue } => {
                if expect_continue && !self.continue_sent {
                    self.continue_sent = true;
                    if !self.has_pending_output() {
                        self.output_since = Some(Instant::now());
                    }
                    self.outbuf.extend_from_slice(CONTINUE);
                }
                false
            }
            Parsed::Invalid {
                fault,
                resync: Some(len),
                keep_alive,
            } => {
                log::debug!("API request refused: {fault}");
                self.inbuf.drain(..len.min(self.inbuf.len()));
                self.continue_sent = false;
                self.request_started = None;
                self.queue(&Response::fault(400, &fault), keep_alive);
                true
            }
            Parsed::Invalid {
                fault,
                resync: None,
                ..
            } => {
                // The byte stream cannot be re-synchronised: answer once, then close.
                log::debug!("API request refused, closing the connection: {fault}");
                self.inbuf.clear();
                self.queue(&Response::fault(400, &fault), false);
                true
            }
        }
    }

    fn queue(&mut self, response: &Response, keep_alive: bool) {
        if self.out_pos == self.outbuf.len() {
            self.outbuf.clear();
            self.out_pos = 0;
            self.output_since = Some(Instant::now());
        }
        response.write_to(keep_alive, &mut self.outbuf);
        if !keep_alive {
            self.closing = true;
        }
    }

    /// Writes as much pending output as the socket takes.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        while self.has_pending_output() {
            match self.stream.write(&self.outbuf[self.out_pos..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    self.out_pos += n;
                    self.output_since = Some(Instant::now());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.outbuf.clear();
        self.out_pos = 0;
        self.output_since = None;
        Ok(())
    }
}
