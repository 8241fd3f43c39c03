//! The guest's HTTP/1.x requests (parsed with `httparse` from a bounded buffer) and our
//! responses, in the shape Firecracker's MMDS writes them: a status line with an empty
//! reason phrase, `Content-Type` and `Content-Length`.

/// Headers one request may carry; more is refused (400).
pub const MAX_HEADERS: usize = 32;
/// Largest request body accepted (bodies are read and ignored: no MMDS request needs one).
pub const MAX_BODY: usize = 1024;

/// Token header names (the `X-aws-ec2-` aliases are accepted as on EC2).
pub const TOKEN_HEADERS: [&str; 2] = ["X-metadata-token", "X-aws-ec2-metadata-token"];
pub const TTL_HEADERS: [&str; 2] = [
    "X-metadata-token-ttl-seconds",
    "X-aws-ec2-metadata-token-ttl-seconds",
];
/// Token requests carrying it are refused: a proxy in the guest forwarding someone else's
/// request must not obtain tokens (EC2's and Firecracker's rule).
pub const FORWARDED_FOR: &str = "X-Forwarded-For";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Other(String),
}

/// What the service needs of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The absolute path (an absolute-form URI loses its scheme and host), repeated slashes
    /// collapsed, query dropped: a JSON pointer into the store. Empty for `GET http://host`.
    pub path: String,
    pub http10: bool,
    pub accept_json: bool,
    /// The token header's value, if any.
    pub token: Option<String>,
    /// `(header name, value)` of the TTL header, if any.
    pub ttl: Option<(String, String)>,
    pub forwarded_for: bool,
    /// The client asked to close after this response (`Connection: close`, or HTTP/1.0
    /// without keep-alive).
    pub close: bool,
}

/// Why bytes are not a request we can answer; each is answered 400 and the connection
/// closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("Invalid request: {0}.")]
    Malformed(String),
    #[error("Request too large.")]
    TooLarge,
    #[error("Unsupported transfer encoding.")]
    Chunked,
}

/// The outcome of looking at the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// A request and how many bytes (head and body) it used.
    Complete(Box<Request>, usize),
}

fn header<'a>(headers: &'a [httparse::Header<'a>], names: &[&str]) -> Option<(&'a str, &'a [u8])> {
    headers
        .iter()
        .find(|h| names.iter().any(|n| h.name.eq_ignore_ascii_case(n)))
        .map(|h| (h.name, h.value))
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).trim().to_owned()
}

/// Parses one request from the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::TooLarge),
        Err(e) => return Err(ParseError::Malformed(e.to_string())),
    };
    let headers = req.headers;
    if header(headers, &["Transfer-Encoding"]).is_some() {
        return Err(ParseError::Chunked);
    }
    let body_len = match header(headers, &["Content-Length"]) {
        None => 0,
        Some((_, v)) => text(v)
            .parse::<usize>()
            .map_err(|_| ParseError::Malformed("bad Content-Length".into()))?,
    };
    if body_len > MAX_BODY {
        return Err(ParseError::TooLarge);
    }
    let total = head_len + body_len;
    if buf.len() < total {
        return Ok(Parsed::Partial);
    }
    let method = match req.method.unwrap_or_default() {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        other => Method::Other(other.to_owned()),
    };
    let http10 = req.version == Some(0);
    let connection = header(headers, &["Connection"]).map(|(_, v)| text(v).to_ascii_lowercase());
    let close = match connection.as_deref() {
        Some("close") => true,
        Some("keep-alive") => false,
        _ => http10,
    };
    let request = Request {
        method,
        path: sanitize_path(req.path.unwrap_or_default()),
        http10,
        accept_json: header(headers, &["Accept"])
            .is_some_and(|(_, v)| text(v).to_ascii_lowercase().contains("application/json")),
        token: header(headers, &TOKEN_HEADERS).map(|(_, v)| text(v)),
        ttl: header(headers, &TTL_HEADERS).map(|(n, v)| (n.to_owned(), text(v))),
        forwarded_for: header(headers, &[FORWARDED_FOR]).is_some(),
        close,
    };
    Ok(Parsed::Complete(Box::new(request), total))
}

/// The path part of a request target as a JSON pointer: `http://host/a//b?x` → `/a/b`.
fn sanitize_path(target: &str) -> String {
    let target = match target.find("://") {
        Some(i) => {
            let rest = &target[i + 3..];
            rest.find('/').map_or("", |j| &rest[j..])
        }
        None => target,
    };
    let target = target.split(['?', '#']).next().unwrap_or("");
    let mut out = String::with_capacity(target.len());
    for c in target.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// A response to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub json: bool,
    pub body: String,
    /// 405 lists the methods served.
    pub allow: Option<&'static str>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            json: false,
            body: body.into(),
            allow: None,
        }
    }

    pub fn json(body: String) -> Self {
        Self {
            status: 200,
            json: true,
            body,
            allow: None,
        }
    }

    /// The bytes on the wire, in the request's HTTP version.
    pub fn encode(&self, http10: bool, close: bool) -> Vec<u8> {
        let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        let mut head = format!(
            "{version} {} \r\nServer: xenia MMDS\r\nConnection: {}\r\nContent-Type: {}\r\n",
            self.status,
            if close { "close" } else { "keep-alive" },
            if self.json {
                "application/json"
            } else {
                "text/plain"
            },
        );
        if let Some(allow) = self.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut out = head.into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bytes: &[u8]) -> (Request, usize) {
        match parse(bytes) {
            Ok(Parsed::Complete(r, n)) => (*r, n),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_get_with_headers() {
        let raw = b"GET http://169.254.169.254//latest//meta-data/?x=1 HTTP/1.1\r\n\
            Host: 169.254.169.254\r\naccept: application/json\r\n\
            x-aws-ec2-metadata-token: abc \r\n\r\nGET / HTTP/1.1\r\n";
        let (r, n) = complete(raw);
        assert_eq!(n, raw.len() - "GET / HTTP/1.1\r\n".len());
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/latest/meta-data/");
        assert!(r.accept_json && !r.http10 && !r.close && !r.forwarded_for);
        assert_eq!(r.token.as_deref(), Some("abc"));
    }

    #[test]
    fn a_token_put_and_connection_semantics() {
        let (r, _) = complete(
            b"PUT /latest/api/token HTTP/1.0\r\nX-metadata-token-ttl-seconds: 21600\r\n\
              X-Forwarded-For: 10.0.0.1\r\n\r\n",
        );
        assert_eq!(r.method, Method::Put);
        assert!(r.http10 && r.close && r.forwarded_for && !r.accept_json);
        assert_eq!(
            r.ttl,
            Some(("X-metadata-token-ttl-seconds".into(), "21600".into()))
        );
        let (r, _) = complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(r.close);
        let (r, _) = complete(b"GET http://169.254.169.254 HTTP/1.1\r\n\r\n");
        assert_eq!(r.path, "");
    }

    #[test]
    fn partial_bodies_and_limits() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x"), Ok(Parsed::Partial));
        assert_eq!(parse(b""), Ok(Parsed::Partial));
        let with_body = b"PUT /latest/api/token HTTP/1.1\r\nContent-Length: 4\r\n\r\nab";
        assert_eq!(parse(with_body), Ok(Parsed::Partial));
        let mut full = with_body.to_vec();
        full.extend_from_slice(b"cd");
        assert_eq!(complete(&full).1, full.len());
        let huge = format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert_eq!(parse(huge.as_bytes()), Err(ParseError::TooLarge));
        let chunked = b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse(chunked), Err(ParseError::Chunked));
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("H{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(parse(many.as_bytes()), Err(ParseError::TooLarge));
        assert!(matches!(
            parse(b"\x00\x01 junk\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
    }

    #[test]
    fn responses_have_firecrackers_shape() {
        let r = Response::text(404, "Resource not found: /x.");
        let wire = String::from_utf8(r.encode(false, false)).unwrap();
        assert!(wire.starts_with("HTTP/1.1 404 \r\n"), "{wire}");
        assert!(wire.contains("Content-Type: text/plain\r\n"));
        assert!(wire.ends_with("Content-Length: 23\r\n\r\nResource not found: /x."));
        let j = String::from_utf8(Response::json("{}".into()).encode(true, true)).unwrap();
        assert!(j.starts_with("HTTP/1.0 200 \r\n") && j.contains("Connection: close"));
        assert!(j.contains("application/json"));
    }
}
