//! The request and response types the handler sees, and the response bytes on the wire.

use std::fmt;

/// The HTTP methods the API serves. Anything else is answered with 400 by the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Put,
    Patch,
}

impl Method {
    /// Parses a request-line method token (case-sensitive, as HTTP defines it).
    pub fn from_token(token: &str) -> Option<Method> {
        match token {
            "GET" => Some(Method::Get),
            "PUT" => Some(Method::Put),
            "PATCH" => Some(Method::Patch),
            _ => None,
        }
    }

    /// The method's token as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One complete HTTP request, as handed to the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The request target without its query string, e.g. `/drives/rootfs`.
    pub path: String,
    /// The query string after `?`, if the target had one.
    pub query: Option<String>,
    /// Header names lower-cased, values trimmed, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Exactly `Content-Length` bytes (empty when the request had no body).
    pub body: Vec<u8>,
}

impl Request {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the handler answers. The transport adds `Server`, `Connection`, and for a body
/// `Content-Type: application/json` and `Content-Length`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// A JSON document; `None` for 204 and other bodiless answers.
    pub body: Option<Vec<u8>>,
    /// Extra headers, e.g. `("Deprecation", "true")`.
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// A response with a status and no body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            body: None,
            headers: Vec::new(),
        }
    }

    /// `204 No Content`: the success answer of every PUT/PATCH.
    pub fn no_content() -> Response {
        Response::new(204)
    }

    /// A response carrying a JSON document the caller already serialised.
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            body: Some(body),
            headers: Vec::new(),
        }
    }

    /// An error answer in Firecracker's shape: `{"fault_message": "<message>"}`.
    pub fn fault(status: u16, message: &str) -> Response {
        let mut body = String::with_capacity(message.len() + 22);
        body.push_str("{\"fault_message\":\"");
        escape_json_into(message, &mut body);
        body.push_str("\"}");
        Response::json(status, body.into_bytes())
    }

    /// Adds a header (e.g. `Deprecation: true`). Names or values holding CR/LF are dropped,
    /// so a caller cannot split the response.
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        let clean = |s: &str| !s.bytes().any(|b| b == b'\r' || b == b'\n');
        if clean(name) && clean(value) && !name.is_empty() {
            self.headers.push((name.to_string(), value.to_string()));
        } else {
            log::warn!("dropping response header {name:?} with a line break or empty name");
        }
        self
    }

    /// Marks the response with `Deprecation: true`, as Firecracker does when a request used a
    /// deprecated field.
    pub fn deprecated(self) -> Response {
        self.with_header("Deprecation", "true")
    }

    /// Appends the response's bytes to `out`. `keep_alive` selects the `Connection` header.
    pub(crate) fn write_to(&self, keep_alive: bool, out: &mut Vec<u8>) {
        // Firecracker's status line carries no reason phrase: "HTTP/1.1 204 \r\n".
        out.extend_from_slice(format!("HTTP/1.1 {} \r\n", self.status).as_bytes());
        out.extend_from_slice(b"Server: xenia API\r\n");
        if keep_alive {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        } else {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        // A 204 or 1xx never carries a body; anything else with a body says how long it is.
        let body = match &self.body {
            Some(body) if self.status != 204 && self.status >= 200 => Some(body),
            _ => None,
        };
        if let Some(body) = body {
            out.extend_from_slice(b"Content-Type: application/json\r\n");
            out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(body);
        } else {
            if self.status != 204 && self.status >= 200 {
                out.extend_from_slice(b"Content-Length: 0\r\n");
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Escapes `s` as the inside of a JSON string literal.
fn escape_json_into(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(resp: &Response, keep_alive: bool) -> String {
        let mut out = Vec::new();
        resp.write_to(keep_alive, &mut out);
        String::from_utf8(out).expect("responses are ASCII here")
    }

    #[test]
    fn no_content_has_empty_reason_and_no_body() {
        let text = bytes(&Response::no_content(), true);
        assert_eq!(
            text,
            "HTTP/1.1 204 \r\nServer: xenia API\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn no_content_drops_a_body_given_by_mistake() {
        let text = bytes(&Response::json(204, b"{}".to_vec()), true);
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        assert!(!text.contains("Content-Length"), "{text}");
    }

    #[test]
    fn json_body_carries_type_and_length() {
        let text = bytes(&Response::json(200, b"{\"a\":1}".to_vec()), false);
        assert_eq!(
            text,
            "HTTP/1.1 200 \r\nServer: xenia API\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}"
        );
    }

    #[test]
    fn fault_escapes_the_message() {
        let resp = Response::fault(400, "bad \"x\"\n\\ \u{1}");
        assert_eq!(
            resp.body.as_deref(),
            Some(&b"{\"fault_message\":\"bad \\\"x\\\"\\n\\\\ \\u0001\"}"[..])
        );
        assert_eq!(resp.status, 400);
    }

    #[test]
    fn deprecation_header_is_written() {
        let text = bytes(&Response::no_content().deprecated(), true);
        assert!(text.contains("\r\nDeprecation: true\r\n"), "{text}");
    }

    #[test]
    fn header_with_line_break_is_dropped() {
        let resp = Response::no_content().with_header("X", "a\r\nEvil: 1");
        assert!(resp.headers.is_empty());
    }

    #[test]
    fn method_tokens_round_trip() {
        for m in [Method::Get, Method::Put, Method::Patch] {
            assert_eq!(Method::from_token(m.as_str()), Some(m));
        }
        assert_eq!(Method::from_token("get"), None);
        assert_eq!(Method::from_token("POST"), None);
    }

    #[test]
    fn request_header_lookup_ignores_case() {
        let req = Request {
            method: Method::Get,
            path: "/".into(),
            query: None,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Vec::new(),
        };
        assert_eq!(req.header("Content-Type"), Some("application/json"));
        assert_eq!(req.header("accept"), None);
    }
}
