//! The metadata service shared by the API (VMM thread) and every MMDS endpoint (`io`
//! thread): the data store, the version and output settings, and the token authority.
//! Answers are Firecracker's: its status codes and message texts.

use std::time::Instant;

use serde_json::Value;

use crate::http::{Method, Request, Response, FORWARDED_FOR, TOKEN_HEADERS, TTL_HEADERS};
use crate::metrics::METRICS;
use crate::store::{DataStore, OutputFormat, StoreError};
use crate::token::{TokenAuthority, TokenError};

/// The path of the token request.
pub const TOKEN_PATH: &str = "/latest/api/token";

/// `mmds-config.version`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Version {
    /// GETs need no token (tokens are still issued and accepted).
    #[default]
    V1,
    /// GETs need a valid session token.
    V2,
}

/// The metadata service of one VM.
#[derive(Debug)]
pub struct Mmds {
    store: DataStore,
    version: Version,
    imds_compat: bool,
    tokens: TokenAuthority,
}

impl Mmds {
    /// An empty V1 service whose store holds at most `limit` bytes.
    pub fn new(limit: usize) -> Result<Self, TokenError> {
        Ok(Self {
            store: DataStore::new(limit),
            version: Version::V1,
            imds_compat: false,
            tokens: TokenAuthority::new()?,
        })
    }

    /// Applies `mmds-config` (version and output format; the address and interfaces are the
    /// net devices' business).
    pub fn configure(&mut self, version: Version, imds_compat: bool) {
        self.version = version;
        self.imds_compat = imds_compat;
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// `PUT /mmds`.
    pub fn put_data(&mut self, data: Value) -> Result<(), StoreError> {
        self.store.put(data)
    }

    /// `PATCH /mmds`.
    pub fn patch_data(&mut self, patch: &Value) -> Result<(), StoreError> {
        self.store.patch(patch)
    }

    /// `GET /mmds`.
    pub fn data(&self) -> &Value {
        self.store.value()
    }

    /// The answer to one guest request at `now`.
    pub fn respond(&mut self, req: &Request, now: Instant) -> Response {
        METRICS.rx_count.inc();
        let response = self.respond_inner(req, now);
        if response.status >= 400 {
            METRICS.rx_errors.inc();
        }
        response
    }

    fn respond_inner(&mut self, req: &Request, now: Instant) -> Response {
        if req.path.is_empty() {
            return Response::text(400, "Invalid URI.");
        }
        match req.method {
            Method::Get => self.get(req, now),
            Method::Put => self.put_token(req, now),
            Method::Other(_) => {
                let mut r = Response::text(405, "Not allowed HTTP method.");
                r.allow = Some("GET, PUT");
                r
            }
        }
    }

    fn get(&self, req: &Request, now: Instant) -> Response {
        if self.version == Version::V2 {
            match &req.token {
                None => {
                    METRICS.rx_no_token.inc();
                    return Response::text(
                        401,
                        format!(
                            "No MMDS token provided. Use `{}` or `{}` header to specify the \
                             session token.",
                            TOKEN_HEADERS[0], TOKEN_HEADERS[1]
                        ),
                    );
                }
                Some(t) if !self.tokens.is_valid(t, now) => {
                    METRICS.rx_invalid_token.inc();
                    return Response::text(401, "MMDS token not valid.");
                }
                Some(_) => {}
            }
        }
        let format = if req.accept_json && !self.imds_compat {
            OutputFormat::Json
        } else {
            OutputFormat::Imds
        };
        match self.store.get(&req.path, format) {
            Ok(body) if format == OutputFormat::Json => Response::json(body),
            Ok(body) => Response::text(200, body),
            Err(StoreError::NotFound) => {
                Response::text(404, format!("Resource not found: {}.", req.path))
            }
            Err(e @ StoreError::UnsupportedValueType) => Response::text(501, e.to_string()),
            Err(e) => Response::text(400, e.to_string()),
        }
    }

    fn put_token(&mut self, req: &Request, now: Instant) -> Response {
        if req.forwarded_for {
            return Response::text(
                400,
                format!("Invalid header. Reason: Unsupported header name. Key: {FORWARDED_FOR}"),
            );
        }
        if req.path != TOKEN_PATH {
            return Response::text(404, format!("Resource not found: {}.", req.path));
        }
        let Some((name, value)) = &req.ttl else {
            return Response::text(
                400,
                format!(
                    "Token time to live value not found. Use `{}` or `{}` header to specify the \
                     token's lifetime.",
                    TTL_HEADERS[0], TTL_HEADERS[1]
                ),
            );
        };
        let Ok(ttl) = value.parse::<u32>() else {
            return Response::text(
                400,
                format!("Invalid header. Reason: Invalid value. Key:{name}; Value:{value}"),
            );
        };
        match self.tokens.issue(ttl, now) {
            Ok(token) => Response::text(200, token),
            Err(e) => Response::text(400, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse, Parsed};
    use std::time::Duration;

    fn req(raw: &str) -> Request {
        match parse(raw.as_bytes()) {
            Ok(Parsed::Complete(r, _)) => *r,
            other => panic!("{other:?}"),
        }
    }

    fn mmds(version: Version, imds_compat: bool) -> Mmds {
        let mut m = Mmds::new(51_200).unwrap();
        m.configure(version, imds_compat);
        m.put_data(serde_json::json!({"latest": {"meta-data": {"id": "i-7"}}, "n": 5}))
            .unwrap();
        m
    }

    #[test]
    fn v1_serves_without_token_and_formats_by_accept() {
        let mut m = mmds(Version::V1, false);
        let now = Instant::now();
        let r = m.respond(&req("GET /latest/meta-data/id HTTP/1.1\r\n\r\n"), now);
        assert_eq!((r.status, r.body.as_str(), r.json), (200, "i-7", false));
        let r = m.respond(
            &req("GET /latest/meta-data/id HTTP/1.1\r\nAccept: application/json\r\n\r\n"),
            now,
        );
        assert_eq!((r.status, r.body.as_str(), r.json), (200, "\"i-7\"", true));
        let r = m.respond(&req("GET /latest HTTP/1.1\r\n\r\n"), now);
        assert_eq!(r.body, "meta-data/");
        let r = m.respond(&req("GET /n HTTP/1.1\r\n\r\n"), now);
        assert_eq!(r.status, 501);
        let r = m.respond(&req("GET /missing HTTP/1.1\r\n\r\n"), now);
        assert_eq!(
            (r.status, r.body.as_str()),
            (404, "Resource not found: /missing.")
        );
        let r = m.respond(&req("POST / HTTP/1.1\r\n\r\n"), now);
        assert_eq!((r.status, r.allow), (405, Some("GET, PUT")));
        // V1 issues tokens and ignores them on GET.
        let r = m.respond(
            &req("PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 5\r\n\r\n"),
            now,
        );
        assert_eq!(r.status, 200);
        let r = m.respond(
            &req("GET /n HTTP/1.1\r\nX-metadata-token: bogus\r\nAccept: application/json\r\n\r\n"),
            now,
        );
        assert_eq!((r.status, r.body.as_str()), (200, "5"));
    }

    #[test]
    fn imds_compat_always_writes_text() {
        let mut m = mmds(Version::V1, true);
        let r = m.respond(
            &req("GET /latest/meta-data/id HTTP/1.1\r\nAccept: application/json\r\n\r\n"),
            Instant::now(),
        );
        assert_eq!((r.body.as_str(), r.json), ("i-7", false));
    }

    #[test]
    fn v2_needs_a_valid_unexpired_token() {
        let mut m = mmds(Version::V2, false);
        let t0 = Instant::now();
        let get = |tok: &str| {
            req(&format!(
                "GET /latest/meta-data/id HTTP/1.1\r\nX-aws-ec2-metadata-token: {tok}\r\n\r\n"
            ))
        };
        let r = m.respond(&req("GET /latest/meta-data/id HTTP/1.1\r\n\r\n"), t0);
        assert_eq!(r.status, 401);
        assert!(r.body.starts_with("No MMDS token provided."), "{}", r.body);
        let r = m.respond(&get("nonsense"), t0);
        assert_eq!((r.status, r.body.as_str()), (401, "MMDS token not valid."));
        let r = m.respond(
            &req(
                "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 1\r\n\r\n",
            ),
            t0,
        );
        assert_eq!(r.status, 200);
        let token = r.body;
        assert_eq!(m.respond(&get(&token), t0).body, "i-7");
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(m.respond(&get(&token), later).status, 401);
    }

    #[test]
    fn token_requests_are_checked_like_firecracker() {
        let mut m = mmds(Version::V2, false);
        let now = Instant::now();
        let put = |extra: &str| req(&format!("PUT /latest/api/token HTTP/1.1\r\n{extra}\r\n"));
        let r = m.respond(&put(""), now);
        assert_eq!(r.status, 400);
        assert!(r.body.starts_with("Token time to live value not found."));
        let r = m.respond(&put("X-metadata-token-ttl-seconds: 0\r\n"), now);
        assert_eq!(r.status, 400);
        assert!(r
            .body
            .starts_with("Invalid time to live value provided for token: 0."));
        let r = m.respond(&put("X-metadata-token-ttl-seconds: 21601\r\n"), now);
        assert_eq!(r.status, 400);
        let r = m.respond(&put("X-metadata-token-ttl-seconds: soon\r\n"), now);
        assert_eq!(r.status, 400);
        let r = m.respond(
            &put("X-metadata-token-ttl-seconds: 60\r\nX-Forwarded-For: 1.2.3.4\r\n"),
            now,
        );
        assert_eq!(r.status, 400);
        assert!(r.body.contains("X-Forwarded-For"));
        let r = m.respond(
            &req("PUT /latest/other HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n"),
            now,
        );
        assert_eq!(r.status, 404);
        let r = m.respond(&req("GET http://169.254.169.254 HTTP/1.1\r\n\r\n"), now);
        assert_eq!((r.status, r.body.as_str()), (400, "Invalid URI."));
    }
}
