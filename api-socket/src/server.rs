//! The listening socket and the API thread's epoll loop.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::connection::{Connection, Unread};
use crate::http::{Request, Response};
use crate::parse::Limits;

/// Epoll token of the listening socket.
const LISTENER_TOKEN: u64 = u64::MAX;
/// Epoll token of the shutdown event.
const SHUTDOWN_TOKEN: u64 = u64::MAX - 1;
/// Events taken from epoll per wait.
const EVENT_BATCH: usize = 64;

/// Tunables of the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerOptions {
    /// Open connections served at once. Past it, a new connection evicts the least
    /// recently used idle one (or, when none is idle, the least recently used one).
    pub max_connections: usize,
    /// The largest request body accepted, in bytes (`--http-api-max-payload-size`).
    pub max_payload: usize,
    /// The largest request line plus headers accepted, in bytes.
    pub max_header_bytes: usize,
    /// How long a connection may take to deliver one whole request (from its first byte),
    /// or to accept the bytes of an answer (between two writes that make progress). Past
    /// it the connection is closed, so a client cannot hold a slot with a request it never
    /// finishes. Idle connections between requests have no deadline.
    pub request_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            max_connections: 64,
            max_payload: 51_200,
            max_header_bytes: 8 * 1024,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// What can go wrong when binding or running the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("API socket {}: another process is already serving on it", path.display())]
    AddressInUse { path: PathBuf },
    #[error("API socket {}: the path exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("API socket {}: cannot inspect the existing path: {source}", path.display())]
    Inspect { path: PathBuf, source: io::Error },
    #[error("API socket {}: cannot remove the stale socket file: {source}", path.display())]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("API socket {}: cannot bind: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error("API server option {name} must be at least {min}, got {value}")]
    InvalidOption {
        name: &'static str,
        min: usize,
        value: usize,
    },
    #[error("API server epoll {op} failed: {source}")]
    Epoll { op: &'static str, source: io::Error },
}

/// An HTTP/1.1 server on a Unix socket, serving one request at a time on the calling thread.
///
/// The socket file is removed when the server is dropped (if it is still the one we bound).
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file we created, so drop never removes someone else's.
    socket_id: (u64, u64),
    epoll: Epoll,
    options: ServerOptions,
    connections: HashMap<u64, Connection>,
    next_id: u64,
    clock: u64,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("path", &self.path)
            .field("options", &self.options)
            .field("connections", &self.connections.len())
            .finish()
    }
}

impl ApiServer {
    /// Binds the API socket at `path`.
    ///
    /// A socket file nobody listens on (left by a crashed process) is replaced; a live
    /// server on `path` gives [`ApiServerError::AddressInUse`]; a path that is not a socket
    /// is never removed.
    pub fn bind(path: &Path, options: ServerOptions) -> Result<ApiServer, ApiServerError> {
        check_options(&options)?;
        remove_stale_socket(path)?;
        let listener = UnixListener::bind(path).map_err(|source| match source.kind() {
            io::ErrorKind::AddrInUse => ApiServerError::AddressInUse {
                path: path.to_path_buf(),
            },
            _ => ApiServerError::Bind {
                path: path.to_path_buf(),
                source,
            },
        })?;
        let bind_err = |source| ApiServerError::Bind {
            path: path.to_path_buf(),
            source,
        };
        listener.set_nonblocking(true).map_err(bind_err)?;
        let meta = std::fs::symlink_metadata(path).map_err(bind_err)?;
        let epoll = Epoll::new().map_err(|source| ApiServerError::Epoll {
            op: "create",
            source,
        })?;
        epoll_ctl(
            &epoll,
            ControlOperation::Add,
            listener.as_raw_fd(),
            EventSet::IN,
            LISTENER_TOKEN,
        )?;
        Ok(ApiServer {
            listener,
            path: path.to_path_buf(),
            socket_id: (meta.dev(), meta.ino()),
            epoll,
            options,
            connections: HashMap::new(),
            next_id: 0,
            clock: 0,
        })
    }

    /// The socket path this server listens on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves requests until an epoll error; the handler answers each request in turn.
    pub fn run(
        mut self,
        mut handler: impl FnMut(Request) -> Response,
    ) -> Result<(), ApiServerError> {
        self.serve(None, &mut handler)
    }

    /// Serves requests until `shutdown` (e.g. an `EventFd`) becomes readable. The event is
    /// not consumed, so other watchers of the same fd see it too.
    pub fn run_until(
        mut self,
        shutdown: &impl AsRawFd,
        mut handler: impl FnMut(Request) -> Response,
    ) -> Result<(), ApiServerError> {
        self.serve(Some(shutdown.as_raw_fd()), &mut handler)
    }

    fn serve(
        &mut self,
        shutdown: Option<RawFd>,
        handler: &mut dyn FnMut(Request) -> Response,
    ) -> Result<(), ApiServerError> {
        if let Some(fd) = shutdown {
            epoll_ctl(
                &self.epoll,
                ControlOperation::Add,
                fd,
                EventSet::IN,
                SHUTDOWN_TOKEN,
            )?;
        }
        let mut events = vec![EpollEvent::default(); EVENT_BATCH];
        loop {
            let timeout_ms = self.next_timeout_ms();
            let count = match self.epoll.wait(timeout_ms, &mut events) {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(ApiServerError::Epoll { op: "wait", source }),
            };
            for event in events.iter().take(count) {
                match event.data() {
                    SHUTDOWN_TOKEN => {
                        log::debug!("API server shutting down");
                        return Ok(());
                    }
                    LISTENER_TOKEN => self.accept_all()?,
                    id => self.on_connection_event(id, event.event_set(), handler)?,
                }
            }
            self.expire_overdue();
        }
    }

    /// Milliseconds until the nearest connection deadline (rounded up), or -1 for none.
    fn next_timeout_ms(&self) -> i32 {
        let timeout = self.options.request_timeout;
        let Some(nearest) = self
            .connections
            .values()
            .filter_map(|c| c.deadline(timeout))
            .min()
        else {
            return -1;
        };
        let left = nearest.saturating_duration_since(Instant::now());
        // Round up so that the wake-up is never before the deadline (no busy loop).
        let ms = left.as_micros().div_ceil(1000);
        i32::try_from(ms).unwrap_or(i32::MAX)
    }

    /// Closes every connection whose deadline has passed.
    fn expire_overdue(&mut self) {
        let timeout = self.options.request_timeout;
        let now = Instant::now();
        let overdue: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, c)| c.deadline(timeout).is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            if let Some(conn) = self.connections.get_mut(&id) {
                log::debug!("API connection {id} closed: request or answer overdue");
                conn.expire(timeout);
            }
            self.remove(id);
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_header_bytes: self.options.max_header_bytes,
            max_payload: self.options.max_payload,
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock = self.clock.wrapping_add(1);
        self.clock
    }

    fn accept_all(&mut self) -> Result<(), ApiServerError> {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of fds or memory: make room so the listener does not spin.
                    log::warn!("API socket accept failed: {e}");
                    if !self.evict_one() {
                        return Ok(());
                    }
                    continue;
                }
            };
            self.add_connection(stream)?;
        }
    }

    fn add_connection(&mut self, stream: UnixStream) -> Result<(), ApiServerError> {
        if let Err(e) = stream.set_nonblocking(true) {
            log::warn!("API connection dropped: cannot make it non-blocking: {e}");
            return Ok(());
        }
        while self.connections.len() >= self.options.max_connections {
            if !self.evict_one() {
                break;
            }
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1) % SHUTDOWN_TOKEN;
        let now = self.tick();
        if let Err(e) = epoll_ctl(
            &self.epoll,
            ControlOperation::Add,
            stream.as_raw_fd(),
            EventSet::IN,
            id,
        ) {
            log::warn!("API connection dropped: {e}");
            return Ok(());
        }
        self.connections.insert(id, Connection::new(stream, now));
        Ok(())
    }

    /// Closes the least recently used idle connection or, when none is idle, the one whose
    /// pending request started longest ago (a client trickling bytes keeps `last_active`
    /// fresh but not its request's start, so it cannot push everyone else out instead).
    /// Returns whether one was closed.
    fn evict_one(&mut self) -> bool {
        // Peers that hung up go first; then idle connections with nothing waiting unread.
        let hung_up = self
            .connections
            .iter()
            .find(|(_, c)| c.unread() == Unread::HungUp)
            .map(|(id, _)| *id);
        if let Some(id) = hung_up {
            self.remove(id);
            return true;
        }
        let victim = self
            .connections
            .iter()
            .filter(|(_, c)| c.is_idle() && c.unread() == Unread::Nothing)
            .min_by_key(|(_, c)| c.last_active)
            .or_else(|| {
                self.connections.iter().min_by_key(|(_, c)| {
                    (
                        c.request_started().is_none(),
                        c.request_started(),
                        c.last_active,
                    )
                })
            })
            .map(|(id, _)| *id);
        match victim {
            Some(id) => {
                log::debug!("API connection limit reached: closing connection {id}");
                self.remove(id);
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(conn) = self.connections.remove(&id) {
            // Closing the fd removes it from epoll too; deleting first keeps that explicit.
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                conn.stream().as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    fn on_connection_event(
        &mut self,
        id: u64,
        events: EventSet,
        handler: &mut dyn FnMut(Request) -> Response,
    ) -> Result<(), ApiServerError> {
        let limits = self.limits();
        let now = self.tick();
        let Some(conn) = self.connections.get_mut(&id) else {
            return Ok(());
        };
        conn.last_active = now;
        let readable = events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR);
        let mut outcome = Ok(());
        if conn.watching_input && readable {
            outcome = conn.read_available(&limits);
        }
        if outcome.is_ok() {
            outcome = conn.service(&limits, handler);
        }
        if let Err(e) = outcome {
            log::debug!("API connection {id} closed on I/O error: {e}");
            self.remove(id);
            return Ok(());
        }
        if conn.is_done() {
            self.remove(id);
            return Ok(());
        }
        let wants_input = conn.wants_input();
        if wants_input != conn.watching_input {
            let set = if wants_input {
                EventSet::IN
            } else {
                EventSet::OUT
            };
            let fd = conn.stream().as_raw_fd();
            conn.watching_input = wants_input;
            epoll_ctl(&self.epoll, ControlOperation::Modify, fd, set, id)?;
        }
        Ok(())
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // Remove the socket file only if it is still the one this server created.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.socket_id {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    log::warn!("cannot remove API socket {}: {e}", self.path.display());
                }
            }
        }
    }
}

fn check_options(options: &ServerOptions) -> Result<(), ApiServerError> {
    let checks = [
        ("max_connections", 1, options.max_connections),
        ("max_payload", 1, options.max_payload),
        ("max_header_bytes", 64, options.max_header_bytes),
        (
            "request_timeout (ms)",
            1,
            usize::try_from(options.request_timeout.as_millis()).unwrap_or(usize::MAX),
        ),
    ];
    for (name, min, value) in checks {
        if value < min {
            return Err(ApiServerError::InvalidOption { name, min, value });
        }
    }
    Ok(())
}

/// Removes `path` if it is a socket nobody accepts on. A live server is an error.
fn remove_stale_socket(path: &Path) -> Result<(), ApiServerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ApiServerError::Inspect {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ApiServerError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ApiServerError::AddressInUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("replacing stale API socket {}", path.display());
            std::fs::remove_file(path).map_err(|source| ApiServerError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(ApiServerError::Inspect {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn epoll_ctl(
    epoll: &Epoll,
    op: ControlOperation,
    fd: RawFd,
    set: EventSet,
    token: u64,
) -> Result<(), ApiServerError> {
    epoll
        .ctl(op, fd, EpollEvent::new(set, token))
        .map_err(|source| ApiServerError::Epoll { op: "ctl", source })
}
