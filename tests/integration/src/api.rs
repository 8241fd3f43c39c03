//! A minimal HTTP/1.1 client over a Unix socket, for tests that drive xenia's API.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a request may take before the test fails.
pub const API_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    /// Header lines, lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ApiResponse {
    /// The body as JSON (`Null` when empty or not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The `fault_message` of an error body.
    pub fn fault(&self) -> String {
        self.json()["fault_message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Formats a request with a body (or none when `body` is empty).
pub fn format_request(method: &str, path: &str, body: &str) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    if !body.is_empty() {
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

/// Reads one response from `stream` (Content-Length framed; 204 has no body).
pub fn read_response(stream: &mut UnixStream) -> Result<ApiResponse, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "connection closed before a full response: {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream
            .read(&mut chunk)
            .map_err(|e| format!("read body: {e}"))?;
        if n == 0 {
            return Err("connection closed inside the body".into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(ApiResponse {
        status,
        headers,
        body,
    })
}

/// A client of one xenia API socket; each request uses a fresh connection.
#[derive(Debug, Clone)]
pub struct ApiClient {
    pub socket: PathBuf,
}

impl ApiClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// Connects, retrying until the socket accepts or `timeout` passes.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(&self.socket) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("{} never accepted: {e}", self.socket.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    pub fn connect(&self) -> Result<UnixStream, String> {
        let s = UnixStream::connect(&self.socket)
            .map_err(|e| format!("connect {}: {e}", self.socket.display()))?;
        s.set_read_timeout(Some(API_TIMEOUT))
            .map_err(|e| format!("set timeout: {e}"))?;
        Ok(s)
    }

    /// Sends one request and reads its answer.
    pub fn request(&self, method: &str, path: &str, body: &str) -> Result<ApiResponse, String> {
        let mut s = self.connect()?;
        s.write_all(&format_request(method, path, body))
            .map_err(|e| format!("write: {e}"))?;
        read_response(&mut s)
    }

    /// `request` that panics with context on a transport error (not on an HTTP error).
    pub fn call(&self, method: &str, path: &str, body: &str) -> ApiResponse {
        self.request(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// `call` that also requires `status`.
    pub fn expect(&self, method: &str, path: &str, body: &str, status: u16) -> ApiResponse {
        let r = self.call(method, path, body);
        assert_eq!(
            r.status,
            status,
            "{method} {path} {body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r
    }

    /// `PUT /actions` with InstanceStart, requiring `status`.
    pub fn start_instance(&self, status: u16) -> ApiResponse {
        self.expect(
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#,
            status,
        )
    }
}

/// True while `path` exists.
pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}
