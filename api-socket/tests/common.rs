//! Helpers shared by the socket tests: a server on a thread and a tiny HTTP client.

#![allow(dead_code, clippy::panic)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use api_socket::{ApiServer, Method, Request, Response, ServerOptions};
use vmm_sys_util::eventfd::EventFd;

pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A unique socket path in the temp directory.
pub fn socket_path(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("xenia-api-{tag}-{}-{n}.sock", std::process::id()))
}

/// The handler the tests use: `GET /echo...` answers 200 with the path and a sequence
/// number; `PUT`/`PATCH` answer 204; `GET /deprecated` adds `Deprecation: true`.
pub fn test_handler() -> impl FnMut(Request) -> Response {
    let mut seq = 0u64;
    move |req: Request| {
        seq += 1;
        match (req.method, req.path.as_str()) {
            (Method::Get, "/deprecated") => Response::no_content().deprecated(),
            (Method::Get, path) => Response::json(
                200,
                format!(
                    "{{\"path\":\"{path}\",\"seq\":{seq},\"len\":{}}}",
                    req.body.len()
                )
                .into_bytes(),
            ),
            (Method::Put | Method::Patch, _) => Response::no_content(),
        }
    }
}

/// A server running on its own thread until dropped.
pub struct TestServer {
    pub path: PathBuf,
    shutdown: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start(tag: &str, options: ServerOptions) -> TestServer {
        let path = socket_path(tag);
        let server = ApiServer::bind(&path, options).expect("bind test server");
        let shutdown = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let stop = shutdown.try_clone().expect("clone eventfd");
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                server
                    .run_until(&stop, test_handler())
                    .expect("server loop");
            })
            .expect("spawn server thread");
        TestServer {
            path,
            shutdown,
            thread: Some(thread),
        }
    }

    pub fn connect(&self) -> UnixStream {
        connect(&self.path)
    }

    /// Stops the server and waits for its thread.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let _ = self.shutdown.write(1);
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread panicked");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

pub fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    s.set_write_timeout(Some(TIMEOUT)).expect("write timeout");
    s
}

/// A response as read off the wire.
#[derive(Debug)]
pub struct WireResponse {
    pub status_line: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl WireResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }
}

/// Reads one response (headers, then `Content-Length` bytes of body). Keeps any extra bytes
/// read past it in `pending` for the next call.
pub fn read_response(stream: &mut UnixStream, pending: &mut Vec<u8>) -> WireResponse {
    let header_end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(stream, pending);
    };
    let head = String::from_utf8(pending[..header_end].to_vec()).expect("ascii head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_string();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header colon");
            (n.to_string(), v.trim().to_string())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().expect("content-length"))
        .unwrap_or(0);
    while pending.len() < header_end + len {
        fill(stream, pending);
    }
    let body = pending[header_end..header_end + len].to_vec();
    pending.drain(..header_end + len);
    WireResponse {
        status_line,
        status,
        headers,
        body,
    }
}

fn fill(stream: &mut UnixStream, pending: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).expect("read response");
    assert!(
        n > 0,
        "connection closed mid-response; got {:?}",
        String::from_utf8_lossy(pending)
    );
    pending.extend_from_slice(&buf[..n]);
}

/// Sends one request and reads its answer.
pub fn roundtrip(stream: &mut UnixStream, request: &[u8]) -> WireResponse {
    stream.write_all(request).expect("send request");
    let mut pending = Vec::new();
    let resp = read_response(stream, &mut pending);
    assert!(pending.is_empty(), "unexpected extra bytes: {pending:?}");
    resp
}

/// Reads until the server closes the connection; returns what came.
pub fn read_to_close(stream: &mut UnixStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // A reset after the answer still means the server closed.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!(
                "waiting for close: {e} (got {:?})",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

pub const GET_ROOT: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
pub const PUT_MACHINE: &[u8] = b"PUT /machine-config HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 35\r\n\r\n{\"vcpu_count\":2,\"mem_size_mib\":256}";
