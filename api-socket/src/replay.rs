//! One connection served in memory, without a listening socket or an epoll loop: what the
//! server answers to a given byte stream. Fuzz targets and tests use it to put arbitrary
//! client bytes through the same framing, keep-alive and error paths as the real server.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use crate::connection::Connection;
use crate::http::{Request, Response};
use crate::parse::Limits;
use crate::server::ServerOptions;

/// Rounds without progress after which the exchange is considered finished. One round is
/// enough in practice (the client has hung up and the server read everything); the margin
/// only guards against a connection that neither finishes nor moves.
const IDLE_ROUNDS: usize = 4;

/// Serves one connection whose client writes `input`, then shuts its writing side, and
/// reads everything the server sends back; returns those bytes. The handler answers each
/// complete request in turn, exactly as with [`crate::ApiServer::run`]. Only the limits in
/// `options` apply (there is one connection). Fails only if the socket pair cannot be made.
pub fn serve_stream(
    input: &[u8],
    options: &ServerOptions,
    handler: &mut dyn FnMut(Request) -> Response,
) -> io::Result<Vec<u8>> {
    let (client, server) = UnixStream::pair()?;
    client.set_nonblocking(true)?;
    server.set_nonblocking(true)?;
    let limits = Limits {
        max_header_bytes: options.max_header_bytes,
        max_payload: options.max_payload,
    };
    let mut conn = Connection::new(server, 0);
    let mut client = Client {
        stream: client,
        sent: 0,
        shut: false,
        answer: Vec::new(),
    };
    let mut idle = 0;
    while idle < IDLE_ROUNDS {
        let before = (client.sent, client.answer.len());
        client.send(input);
        // The server reads only while it has nothing to send, as its epoll loop does.
        let mut outcome = Ok(());
        if conn.wants_input() {
            outcome = conn.read_available(&limits);
        }
        if outcome.is_ok() {
            outcome = conn.service(&limits, handler);
        }
        let server_gone = outcome.is_err() || conn.is_done();
        if server_gone {
            // Closing the server's end lets the client read to the end of the stream.
            drop(conn);
            client.receive_all();
            break;
        }
        client.receive_all();
        if (client.sent, client.answer.len()) == before {
            idle += 1;
        } else {
            idle = 0;
        }
    }
    Ok(client.answer)
}

struct Client {
    stream: UnixStream,
    sent: usize,
    shut: bool,
    answer: Vec<u8>,
}

impl Client {
    /// Writes what the socket takes of the rest of `input`; shuts writing once all is sent.
    fn send(&mut self, input: &[u8]) {
        while self.sent < input.len() {
            match self.stream.write(&input[self.sent..]) {
                Ok(0) => break,
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock: the server has to read first. Anything else: the server
                // closed; what it answered is still readable.
                Err(_) => break,
            }
        }
        if self.sent == input.len() && !self.shut {
            self.shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }

    fn receive_all(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => self.answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Method;

    fn echo_path(req: Request) -> Response {
        let body = format!("{{\"path\":\"{}\"}}", req.path).into_bytes();
        match req.method {
            Method::Get => Response::json(200, body),
            _ => Response::no_content(),
        }
    }

    fn serve(input: &[u8]) -> String {
        let out = serve_stream(input, &ServerOptions::default(), &mut echo_path).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn answers_pipelined_requests_in_order() {
        let out = serve(b"GET /a HTTP/1.1\r\n\r\nPUT /b HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}");
        let first = out.find("{\"path\":\"/a\"}").unwrap();
        let second = out.find("HTTP/1.1 204 ").unwrap();
        assert!(first < second, "{out}");
    }

    #[test]
    fn a_bad_request_is_answered_then_the_connection_closes() {
        let out = serve(b"NOT HTTP\r\n\r\nGET /a HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        assert!(out.contains("Connection: close"), "{out}");
        assert!(!out.contains("/a"), "{out}");
    }

    #[test]
    fn a_request_cut_short_gets_no_answer() {
        assert_eq!(
            serve(b"PUT /b HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}"),
            ""
        );
    }

    #[test]
    fn input_larger_than_the_socket_buffers_is_served() {
        let one = b"GET /x HTTP/1.1\r\n\r\n";
        let input: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(one.len() * 20_000)
            .collect();
        let out = serve(&input);
        assert_eq!(out.matches("{\"path\":\"/x\"}").count(), 20_000);
    }

    #[test]
    fn the_payload_limit_applies() {
        let options = ServerOptions {
            max_payload: 4,
            ..ServerOptions::default()
        };
        let input = b"PUT /b HTTP/1.1\r\nContent-Length: 5\r\n\r\n12345";
        let out = serve_stream(input, &options, &mut echo_path).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 400 ") && out.contains("limit"),
            "{out}"
        );
    }
}
