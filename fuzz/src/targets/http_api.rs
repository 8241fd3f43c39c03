//! The API front door: raw client bytes → HTTP framing (`api-socket`) → the route table
//! (`vmm::rpc::parse_request`) → the pre-boot VMM (`Vmm::execute`) → the bytes answered.
//!
//! One input is one connection's byte stream, so pipelined requests, keep-alive, `Expect:
//! 100-continue` and re-synchronisation after an error are all reachable; a fresh `Vmm`
//! per input lets a sequence of requests build a configuration (`PUT /drives` then `GET
//! /vm/config`). Actions with effects outside the process are not executed:
//! `InstanceStart` (boots a VM), `PUT /logger` (the process-wide logger) and `PUT
//! /metrics` (creates files) are answered 204 once the router accepted them. Host paths in
//! `PUT /boot-source` and `PUT /drives` are pointed at one scratch file, so the resource
//! checks (open, file type, cross-section rules) run without touching anything else.
//!
//! Properties checked on the answer: it is a sequence of well-formed HTTP/1.1 responses
//! with a status xenia uses, `Content-Length` equal to the body, a JSON body on every
//! answer that has one, and nothing after an answer that said `Connection: close`.

use std::path::PathBuf;
use std::sync::OnceLock;

use api_socket::{serve_stream, Request, Response, ServerOptions};
use vmm::builder::BuildOptions;
use vmm::logger::LoggerSettings;
use vmm::resources::VmResources;
use vmm::rpc::{parse_request, response_for, Vmm, VmmAction};

/// Small limits so the fuzzer reaches them; the checks are the same as with the defaults.
const OPTIONS: ServerOptions = ServerOptions {
    max_connections: 1,
    max_payload: 4096,
    max_header_bytes: 1024,
    request_timeout: std::time::Duration::from_secs(10),
};

pub fn run(data: &[u8]) {
    let mut vmm = Vmm::new(
        "fuzz".into(),
        VmResources::default(),
        BuildOptions::default(),
        LoggerSettings::default(),
    );
    let mut handler = |request: Request| answer(&mut vmm, &request);
    let Ok(out) = serve_stream(data, &OPTIONS, &mut handler) else {
        // Out of file descriptors: nothing was served.
        return;
    };
    check_responses(&out);
}

/// What the API thread and the VMM thread answer together (`vmm::rpc::api_handler` and
/// `serve_pending`, without the channel between them).
fn answer(vmm: &mut Vmm, request: &Request) -> Response {
    let parsed = match parse_request(request) {
        Ok(parsed) => parsed,
        Err(e) => return e.into(),
    };
    let deprecated = parsed.is_deprecated();
    let response = match contain(parsed.action) {
        Some(action) => response_for(vmm.execute(action)),
        None => Response::no_content(),
    };
    if deprecated {
        response.deprecated()
    } else {
        response
    }
}

/// The action to execute, with host paths replaced by the scratch file; `None` for actions
/// whose effects reach outside this process.
fn contain(action: VmmAction) -> Option<VmmAction> {
    use VmmAction as A;
    match action {
        A::StartInstance | A::PutLogger(_) | A::PutMetrics(_) => None,
        A::PutBootSource(mut boot) => {
            boot.kernel_image_path = scratch_path();
            if boot.initrd_path.is_some() {
                boot.initrd_path = Some(scratch_path());
            }
            Some(A::PutBootSource(boot))
        }
        A::PutDrive(mut drive) => {
            if drive.path_on_host.is_some() {
                drive.path_on_host = Some(scratch_path());
            }
            Some(A::PutDrive(drive))
        }
        other => Some(other),
    }
}

/// A small regular file, readable and writable, shared by every fuzz process (its content
/// never matters, so one file serves all and none is left behind per run).
fn scratch_path() -> String {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        let path = crate::scratch_dir().join("xenia-fuzz-scratch.img");
        if let Err(e) = std::fs::write(&path, [0u8; 4096]) {
            panic!("cannot create the scratch file {}: {e}", path.display());
        }
        path
    });
    path.to_string_lossy().into_owned()
}

/// Asserts that `out` is a sequence of well-formed answers (see the module comment).
fn check_responses(mut out: &[u8]) {
    let mut closed = false;
    while !out.is_empty() {
        assert!(!closed, "bytes after a `Connection: close` answer: {out:?}");
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "malformed answer ({other:?}): {:?}",
                String::from_utf8_lossy(out)
            ),
        };
        assert_eq!(resp.version, Some(1), "answer not HTTP/1.1");
        let code = resp.code.unwrap_or(0);
        assert!(
            matches!(code, 100 | 200 | 204 | 400),
            "unexpected status {code}: {:?}",
            String::from_utf8_lossy(out)
        );
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        closed = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let body_len = match header("content-length") {
            Some(v) => match v.parse::<usize>() {
                Ok(n) => n,
                Err(_) => panic!("bad Content-Length {v:?}"),
            },
            None => 0,
        };
        assert!(
            code != 204 && code != 100 || body_len == 0,
            "{code} answer with a body"
        );
        let rest = &out[head_len..];
        assert!(rest.len() >= body_len, "answer body cut short");
        let body = &rest[..body_len];
        if body_len > 0 {
            assert_eq!(
                header("content-type").as_deref(),
                Some("application/json"),
                "body without a JSON content type"
            );
            if let Err(e) = serde_json::from_slice::<serde_json::Value>(body) {
                panic!(
                    "body is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(body)
                );
            }
        }
        out = &rest[body_len..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_built_over_one_connection_shows_in_vm_config() {
        let drive = r#"{"drive_id":"rootfs","path_on_host":"/nonexistent","is_root_device":true,"is_read_only":false}"#;
        let input = format!(
            "PUT /drives/rootfs HTTP/1.1\r\nContent-Length: {}\r\n\r\n{drive}\
             GET /vm/config HTTP/1.1\r\n\r\n",
            drive.len()
        );
        let mut vmm = Vmm::new(
            "t".into(),
            VmResources::default(),
            BuildOptions::default(),
            LoggerSettings::default(),
        );
        let mut handler = |request: Request| answer(&mut vmm, &request);
        let out = serve_stream(input.as_bytes(), &OPTIONS, &mut handler).unwrap_or_default();
        check_responses(&out);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 204 "), "{text}");
        assert!(text.contains(&scratch_path()), "{text}");
    }

    #[test]
    #[should_panic(expected = "unexpected status")]
    fn the_checker_refuses_a_status_xenia_never_sends() {
        check_responses(b"HTTP/1.1 302 \r\n\r\n");
    }
}
