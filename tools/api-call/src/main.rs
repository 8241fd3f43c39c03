//! `xenia-api SOCKET METHOD PATH [BODY]`: one HTTP/1.1 request to xenia's API on a Unix
//! socket; prints the status code on the first line and the response body after it.
//!
//! It exists for the nested tier: L1 holds only busybox and static binaries, and busybox
//! `nc` cannot open a Unix socket. Standard library only, so it links statically like
//! xenia. The socket may not exist yet when a plan has just started xenia: connecting is
//! retried for up to 5 s. Exit status: 0 for a 2xx answer, 1 for any other answer, 2 when
//! no answer could be had.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool: stdout is its output, stderr its errors"
)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const CONNECT_FOR: Duration = Duration::from_secs(5);
const ANSWER_WITHIN: Duration = Duration::from_secs(30);
/// Larger answers are not something xenia's API sends; refuse rather than grow unbounded.
const MAX_RESPONSE: usize = 1 << 20;

fn connect(socket: &str) -> Result<UnixStream, String> {
    let start = Instant::now();
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => return Ok(stream),
            Err(e) if start.elapsed() < CONNECT_FOR => {
                // The listener is not there yet; xenia creates it early in its start-up.
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("cannot connect to {socket}: {e}")),
        }
    }
}

/// The request's bytes: a body, when given, is sent as JSON.
fn request(method: &str, path: &str, body: Option<&str>) -> Vec<u8> {
    let mut text =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if let Some(body) = body {
        text.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        text.push_str("\r\n");
    }
    text.into_bytes()
}

/// Status code and body of the first response in `stream`.
fn response(stream: &mut UnixStream) -> Result<(u16, Vec<u8>), String> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the connection closed before a complete header".into());
        }
        data.extend_from_slice(&chunk[..n]);
        if data.len() > MAX_RESPONSE {
            return Err("the response header is too large".into());
        }
    };
    let head = String::from_utf8_lossy(&data[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP status line: {head:?}"))?;
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.trim().parse::<usize>())
        .transpose()
        .map_err(|e| format!("bad Content-Length: {e}"))?
        .unwrap_or(0);
    if length > MAX_RESPONSE {
        return Err(format!("a {length}-byte body is too large"));
    }
    let mut body = data.split_off(header_end);
    while body.len() < length {
        let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the connection closed inside the body".into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok((status, body))
}

fn call(
    socket: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, Vec<u8>), String> {
    let mut stream = connect(socket)?;
    stream
        .set_read_timeout(Some(ANSWER_WITHIN))
        .map_err(|e| format!("set_read_timeout: {e}"))?;
    stream
        .write_all(&request(method, path, body))
        .map_err(|e| format!("write: {e}"))?;
    response(&mut stream)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !(3..=4).contains(&args.len()) {
        eprintln!("usage: xenia-api SOCKET METHOD PATH [BODY]");
        return ExitCode::from(2);
    }
    match call(
        &args[0],
        &args[1],
        &args[2],
        args.get(3).map(String::as_str),
    ) {
        Ok((status, body)) => {
            println!("{status}");
            println!("{}", String::from_utf8_lossy(&body));
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("xenia-api: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_request_with_a_body_carries_its_length() {
        let bytes = request("PUT", "/snapshot/load", Some("{\"a\":1}"));
        let text = String::from_utf8(bytes).unwrap_or_default();
        assert!(text.starts_with("PUT /snapshot/load HTTP/1.1\r\n"));
        assert!(text.contains("Content-Length: 7\r\n\r\n{\"a\":1}"));
        let bare = String::from_utf8(request("GET", "/", None)).unwrap_or_default();
        assert!(bare.ends_with("\r\n\r\n") && !bare.contains("Content-Length"));
    }

    #[test]
    fn status_and_body_are_read_by_content_length() {
        let dir = std::env::temp_dir().join(format!("xenia-api-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("api.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let n = peer.read(&mut buf).expect("read request");
            let answer =
                "HTTP/1.1 400 Bad Request\r\nContent-Length: 21\r\n\r\n{\"fault_message\":\"x\"}";
            peer.write_all(answer.as_bytes()).expect("answer");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let socket = path.to_string_lossy().into_owned();
        let (status, body) = call(&socket, "PATCH", "/vm", Some("{}")).expect("call");
        let seen = server.join().expect("server thread");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(status, 400);
        assert_eq!(body, b"{\"fault_message\":\"x\"}");
        assert!(seen.starts_with("PATCH /vm HTTP/1.1\r\n"), "{seen}");
    }
}
