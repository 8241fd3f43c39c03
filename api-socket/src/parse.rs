//! Framing one HTTP/1.1 request out of a connection's read buffer, with `httparse`.

use crate::http::{Method, Request};

/// How many header lines a request may carry.
const MAX_HEADERS: usize = 32;

/// Limits applied while framing a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The request line plus headers, in bytes.
    pub max_header_bytes: usize,
    /// The body (`Content-Length`), in bytes.
    pub max_payload: usize,
}

/// The outcome of looking at the start of a read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A whole request took the first `consumed` bytes.
    Complete {
        request: Request,
        consumed: usize,
        keep_alive: bool,
    },
    /// More bytes are needed. `expect_continue` is set once the headers are complete and the
    /// client asked for `100 Continue` before sending its body.
    Partial { expect_continue: bool },
    /// The request is invalid. When its framing is still known (`resync` = the bytes it took),
    /// the connection can go on after the error answer; otherwise it must be closed.
    Invalid {
        fault: String,
        resync: Option<usize>,
        keep_alive: bool,
    },
}

fn invalid(fault: impl Into<String>) -> Parsed {
    Parsed::Invalid {
        fault: fault.into(),
        resync: None,
        keep_alive: false,
    }
}

/// Frames the first request in `buf`.
pub(crate) fn parse_request(buf: &[u8], limits: &Limits) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let header_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_header_bytes {
                return invalid(format!(
                    "Request headers are larger than the limit of {} bytes.",
                    limits.max_header_bytes
                ));
            }
            return Parsed::Partial {
                expect_continue: false,
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return invalid(format!("Request has more than {MAX_HEADERS} header lines."))
        }
        Err(e) => return invalid(format!("Invalid HTTP request: {e}.")),
    };
    if header_len > limits.max_header_bytes {
        return invalid(format!(
            "Request headers are larger than the limit of {} bytes.",
            limits.max_header_bytes
        ));
    }

    let mut content_length: Option<usize> = None;
    let mut expect_continue = false;
    let mut header_list = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else {
            return invalid(format!("Header {} has a value that is not UTF-8.", h.name));
        };
        let value = value.trim();
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            "content-length" => {
                let Some(len) = parse_content_length(value) else {
                    return invalid(format!("Invalid Content-Length: {value:?}."));
                };
                if content_length.is_some_and(|prev| prev != len) {
                    return invalid("Conflicting Content-Length headers.");
                }
                content_length = Some(len);
            }
            "transfer-encoding" => {
                return invalid(
                    "Transfer-Encoding is not supported; send the body with Content-Length.",
                )
            }
            "expect" => expect_continue = value.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
        header_list.push((name, value.to_string()));
    }
    // Firecracker keeps every connection open, whatever the HTTP version or the
    // `Connection` header says, and answers `Connection: keep-alive`; clients rely on it
    // (an HTTP/1.0 client sends its next request on the same socket without asking for
    // keep-alive). Match it: only the client closes, or an error that breaks the framing.
    let keep_alive = true;

    let body_len = content_length.unwrap_or(0);
    if body_len > limits.max_payload {
        return invalid(format!(
            "Request payload with size {body_len} is larger than the limit of {} allowed by server.",
            limits.max_payload
        ));
    }
    let Some(total) = header_len.checked_add(body_len) else {
        return invalid("Request length overflows.");
    };
    if buf.len() < total {
        return Parsed::Partial { expect_continue };
    }

    let method_token = req.method.unwrap_or("");
    let Some(method) = Method::from_token(method_token) else {
        return Parsed::Invalid {
            fault: format!("Unsupported HTTP method: {method_token}."),
            resync: Some(total),
            keep_alive,
        };
    };
    let raw_target = req.path.unwrap_or("");
    let Some(target) = origin_form(raw_target) else {
        return Parsed::Invalid {
            fault: format!("Invalid request target: {raw_target:?}."),
            resync: Some(total),
            keep_alive,
        };
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let body = buf.get(header_len..total).unwrap_or_default().to_vec();
    Parsed::Complete {
        request: Request {
            method,
            path,
            query,
            headers: header_list,
            body,
        },
        consumed: total,
        keep_alive,
    }
}

/// `Content-Length` is 1*DIGIT (RFC 9110 §8.6): no sign, no spaces inside, no `0x`. Rust's
/// integer parser alone would also take a leading `+`. Overflowing values are refused too.
fn parse_content_length(value: &str) -> Option<usize> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<usize>().ok()
}

/// The path-and-query part of a request target. The origin form (`/machine-config`) is
/// what clients send; the absolute form (`http://localhost/machine-config`), which HTTP
/// servers must accept and Firecracker does, is reduced to it (an empty path means `/`).
fn origin_form(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let scheme_len = "http://".len();
    let scheme = target.get(..scheme_len)?;
    if !scheme.eq_ignore_ascii_case("http://") {
        return None;
    }
    let rest = &target[scheme_len..];
    // The authority runs to the first `/` or `?`; it must not be empty.
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    if end == 0 {
        return None;
    }
    match &rest[end..] {
        "" => Some("/"),
        path if path.starts_with('/') => Some(path),
        // `http://host?x`: a query on the root path. Not worth a special case: refuse.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_header_bytes: 1024,
        max_payload: 16,
    };

    fn complete(buf: &[u8]) -> (Request, usize, bool) {
        match parse_request(buf, &LIMITS) {
            Parsed::Complete {
                request,
                consumed,
                keep_alive,
            } => (request, consumed, keep_alive),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    fn fault_of(buf: &[u8]) -> (String, Option<usize>) {
        match parse_request(buf, &LIMITS) {
            Parsed::Invalid { fault, resync, .. } => (fault, resync),
            other => panic!("expected an invalid request, got {other:?}"),
        }
    }

    #[test]
    fn get_without_body() {
        let buf = b"GET /machine-config HTTP/1.1\r\nHost: localhost\r\n\r\nGET";
        let (req, consumed, keep_alive) = complete(buf);
        assert_eq!(req.method, Method::Get);
        assert_eq!(req.path, "/machine-config");
        assert_eq!(req.query, None);
        assert!(req.body.is_empty());
        assert_eq!(consumed, buf.len() - 3);
        assert!(keep_alive);
        assert_eq!(req.header("host"), Some("localhost"));
    }

    #[test]
    fn put_with_body_and_query() {
        let buf = b"PUT /drives/a?x=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        let (req, consumed, _) = complete(buf);
        assert_eq!(req.method, Method::Put);
        assert_eq!(req.path, "/drives/a");
        assert_eq!(req.query.as_deref(), Some("x=1"));
        assert_eq!(req.body, b"{}");
        assert_eq!(consumed, buf.len());
    }

    #[test]
    fn partial_headers_and_partial_body() {
        assert_eq!(
            parse_request(b"PUT /vm HTTP/1.1\r\nContent-Le", &LIMITS),
            Parsed::Partial {
                expect_continue: false
            }
        );
        assert_eq!(
            parse_request(
                b"PATCH /vm HTTP/1.1\r\nContent-Length: 5\r\n\r\n{}",
                &LIMITS
            ),
            Parsed::Partial {
                expect_continue: false
            }
        );
        assert_eq!(
            parse_request(
                b"PUT /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
                &LIMITS
            ),
            Parsed::Partial {
                expect_continue: true
            }
        );
    }

    #[test]
    fn every_framed_request_keeps_the_connection_as_firecracker_does() {
        for req in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n",
        ] {
            let (_, _, ka) = complete(req);
            assert!(ka, "{}", String::from_utf8_lossy(req));
        }
    }

    #[test]
    fn garbage_is_invalid_without_resync() {
        let (fault, resync) = fault_of(b"\x01\x02 garbage\r\n\r\n");
        assert!(fault.starts_with("Invalid HTTP request"), "{fault}");
        assert_eq!(resync, None);
    }

    #[test]
    fn payload_over_limit_is_refused_before_the_body_arrives() {
        let (fault, resync) = fault_of(b"PUT /mmds HTTP/1.1\r\nContent-Length: 17\r\n\r\n");
        assert_eq!(
            fault,
            "Request payload with size 17 is larger than the limit of 16 allowed by server."
        );
        assert_eq!(resync, None);
        // Exactly at the limit is fine.
        let body = [b'x'; 16];
        let mut buf = b"PUT /mmds HTTP/1.1\r\nContent-Length: 16\r\n\r\n".to_vec();
        buf.extend_from_slice(&body);
        assert_eq!(complete(&buf).0.body, body);
    }

    #[test]
    fn unsupported_method_keeps_framing() {
        let buf = b"POST /actions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET";
        let (fault, resync) = fault_of(buf);
        assert_eq!(fault, "Unsupported HTTP method: POST.");
        assert_eq!(resync, Some(buf.len() - 3));
    }

    #[test]
    fn bad_or_conflicting_content_length() {
        assert!(fault_of(b"PUT / HTTP/1.1\r\nContent-Length: abc\r\n\r\n")
            .0
            .contains("Content-Length"));
        for bad in [
            "-1",
            "+2",
            "0x10",
            "1 2",
            "1_0",
            "",
            "99999999999999999999999",
        ] {
            let req = format!("PUT / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            let (fault, resync) = fault_of(req.as_bytes());
            assert!(fault.contains("Content-Length"), "{bad:?}: {fault}");
            assert_eq!(resync, None, "{bad:?}: the framing is unknown");
        }
        // Surrounding whitespace is not part of the value.
        let (req, _, _) = complete(b"PUT / HTTP/1.1\r\nContent-Length:  2 \r\n\r\n{}");
        assert_eq!(req.body, b"{}");
        assert!(
            fault_of(b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .0
                .contains("Conflicting")
        );
    }

    #[test]
    fn chunked_body_is_refused() {
        let (fault, resync) =
            fault_of(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n");
        assert!(fault.contains("Transfer-Encoding"), "{fault}");
        assert_eq!(resync, None);
    }

    #[test]
    fn oversized_headers_are_refused_even_when_incomplete() {
        let mut buf = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        buf.resize(2000, b'a');
        let (fault, _) = fault_of(&buf);
        assert!(fault.contains("headers are larger"), "{fault}");
    }

    #[test]
    fn too_many_headers() {
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..40 {
            buf.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        let limits = Limits {
            max_header_bytes: 4096,
            max_payload: 16,
        };
        assert!(matches!(
            parse_request(&buf, &limits),
            Parsed::Invalid { resync: None, .. }
        ));
    }

    #[test]
    fn absolute_form_target_is_reduced_to_its_path() {
        let (req, _, _) = complete(
            b"PUT http://localhost/machine-config HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        );
        assert_eq!(
            (req.method, req.path.as_str()),
            (Method::Put, "/machine-config")
        );
        let (req, _, _) = complete(b"GET HTTP://localhost:80/drives/a?x=1 HTTP/1.1\r\n\r\n");
        assert_eq!(req.path, "/drives/a");
        assert_eq!(req.query.as_deref(), Some("x=1"));
        let (req, _, _) = complete(b"GET http://localhost HTTP/1.1\r\n\r\n");
        assert_eq!(req.path, "/");
    }

    #[test]
    fn other_targets_are_refused_with_framing_kept() {
        for target in [
            "*",
            "x/y",
            "http://",
            "http:///x",
            "https://h/x",
            "ftp://h/x",
            "http://h?x",
        ] {
            let req = format!("GET {target} HTTP/1.1\r\n\r\n");
            let (fault, resync) = fault_of(req.as_bytes());
            assert!(fault.contains("request target"), "{target}: {fault}");
            assert!(resync.is_some(), "{target}");
        }
    }
}
