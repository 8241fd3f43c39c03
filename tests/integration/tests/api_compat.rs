//! What real Firecracker clients do on the wire that xenia must take as Firecracker does:
//! HTTP/1.0 on a reused connection, absolute-form targets, bodies that are not objects,
//! empty PATCHes, deprecated fields and FlushMetrics without metrics.

use std::io::Write;
use std::path::Path;

use xenia_integration_tests::api::{read_response, ApiClient};
use xenia_integration_tests::{probe, probe_args, Xenia, BOOT_TIMEOUT};

fn boot(api: &ApiClient, kernel: &Path) {
    let body = serde_json::json!({"kernel_image_path": kernel, "boot_args": probe_args("idle")});
    api.expect("PUT", "/boot-source", &body.to_string(), 204);
    api.expect(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
        204,
    );
    api.start_instance(204);
}

#[test]
fn an_http10_client_makes_ten_requests_on_one_connection() {
    let (mut x, api) = Xenia::with_api(&[]);
    let mut s = api.connect().unwrap();
    for i in 0..10 {
        // What a Rust client sends: HTTP/1.0, no Connection header, the same socket again.
        let request = if i % 2 == 0 {
            b"GET / HTTP/1.0\r\n\r\n".to_vec()
        } else {
            let body = format!(r#"{{"vcpu_count": {}, "mem_size_mib": 64}}"#, i % 4 + 1);
            format!(
                "PUT /machine-config HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        };
        s.write_all(&request)
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        let r = read_response(&mut s).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert!(r.status == 200 || r.status == 204, "request {i}: {r:?}");
        assert_eq!(r.header("connection"), Some("keep-alive"), "request {i}");
    }
    let m = api.expect("GET", "/machine-config", "", 200).json();
    assert_eq!(m["vcpu_count"], 2, "{m}");
    x.signal(libc::SIGTERM);
    assert_eq!(x.wait_exit(BOOT_TIMEOUT).unwrap().code(), Some(0));
}

#[test]
fn an_absolute_form_request_is_served() {
    let (_x, api) = Xenia::with_api(&[]);
    let mut s = api.connect().unwrap();
    let body = r#"{"vcpu_count": 2, "mem_size_mib": 96}"#;
    let req = format!(
        "PUT http://localhost/machine-config HTTP/1.1\r\nHost: localhost\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 204);
    s.write_all(b"GET http://localhost/machine-config HTTP/1.1\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.json()["mem_size_mib"], 96, "{r:?}");
}

#[test]
fn bodies_that_are_json_arrays_are_refused() {
    let (_x, api) = Xenia::with_api(&[]);
    for (path, body) in [
        ("/boot-source", r#"["/path"]"#),
        ("/logger", "[]"),
        ("/machine-config", r#"[2,256,false,false,"None"]"#),
    ] {
        let r = api.expect("PUT", path, body, 400);
        assert!(
            r.fault().contains("must be a JSON object"),
            "PUT {path} {body}: {}",
            r.fault()
        );
    }
    // Nothing of it took effect.
    let m = api.expect("GET", "/machine-config", "", 200).json();
    assert_eq!(
        (m["vcpu_count"].as_u64(), m["mem_size_mib"].as_u64()),
        (Some(1), Some(128))
    );
}

#[test]
fn an_empty_patch_is_refused() {
    let (_x, api) = Xenia::with_api(&[]);
    for body in ["{}", ""] {
        let r = api.expect("PATCH", "/machine-config", body, 400);
        assert_eq!(r.fault(), "Empty PATCH request.", "{body:?}");
    }
    api.expect("PATCH", "/machine-config", r#"{"vcpu_count": 2}"#, 204);
}

#[test]
fn a_deprecated_field_gets_the_header_and_one_warning() {
    let (x, api) = Xenia::with_api(&[]);
    let body = r#"{"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "None"}"#;
    for _ in 0..3 {
        let r = api.expect("PUT", "/machine-config", body, 204);
        assert_eq!(r.header("deprecation"), Some("true"));
    }
    let r = api.expect(
        "PATCH",
        "/machine-config",
        r#"{"cpu_template": "None"}"#,
        204,
    );
    assert_eq!(r.header("deprecation"), Some("true"));
    // Without the field: no header.
    let r = api.expect(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
        204,
    );
    assert_eq!(r.header("deprecation"), None);
    // One warning per deprecated use, however often it is repeated (the default log level
    // is Warning, on stderr).
    api.expect("GET", "/", "", 200);
    let stderr = x.stderr();
    let put = "PUT /machine-config: the cpu_template field is deprecated.";
    let patch = "PATCH /machine-config: the cpu_template field is deprecated.";
    assert_eq!(stderr.matches(put).count(), 1, "stderr:\n{stderr}");
    assert_eq!(stderr.matches(patch).count(), 1, "stderr:\n{stderr}");
}

#[test]
fn flush_metrics_without_metrics_is_204_before_and_after_boot() {
    let (mut x, api) = Xenia::with_api(&[]);
    let flush = r#"{"action_type": "FlushMetrics"}"#;
    api.expect("PUT", "/actions", flush, 204);
    boot(&api, &probe().pvh);
    x.wait_for_line("PROBE idle ok", BOOT_TIMEOUT).unwrap();
    api.expect("PUT", "/actions", flush, 204);
    assert_eq!(api.expect("GET", "/", "", 200).json()["state"], "Running");
    x.signal(libc::SIGTERM);
    assert_eq!(x.wait_exit(BOOT_TIMEOUT).unwrap().code(), Some(0));
}

#[test]
fn half_a_request_is_answered_400_and_closed_at_the_deadline() {
    use std::io::Read;
    use std::time::{Duration, Instant};

    let (_x, api) = Xenia::with_api(&[]);
    let mut slow = api.connect().unwrap();
    let started = Instant::now();
    slow.write_all(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"vcpu")
        .unwrap();
    // Meanwhile everyone else is served.
    api.expect("GET", "/", "", 200);
    // The server closes the slow connection by itself (the read returns at the close).
    let mut answer = Vec::new();
    slow.read_to_end(&mut answer).unwrap();
    let waited = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(
        text.contains("Request not received in full within 10000 ms."),
        "{text}"
    );
    assert!(
        (Duration::from_secs(10)..Duration::from_secs(25)).contains(&waited),
        "closed after {waited:?}"
    );
}
