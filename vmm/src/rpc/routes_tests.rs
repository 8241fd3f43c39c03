//! Every route with good and bad bodies, and the OpenAPI document kept in step.

use super::*;
use crate::config::ConfigError;
use crate::rpc::{VmState, VmmAction};

fn ok(method: Method, path: &str, body: &str) -> VmmAction {
    match route(method, path, body.as_bytes()) {
        Ok(parsed) => parsed.action,
        Err(e) => panic!("{method} {path} {body}: unexpected error {e}"),
    }
}

fn err(method: Method, path: &str, body: &str) -> RouteError {
    match route(method, path, body.as_bytes()) {
        Ok(parsed) => panic!("{method} {path} {body}: unexpected success {parsed:?}"),
        Err(e) => e,
    }
}

fn json_err(method: Method, path: &str, body: &str) -> String {
    match err(method, path, body) {
        RouteError::Json(msg) => msg,
        other => panic!("{method} {path} {body}: expected a serde error, got {other:?}"),
    }
}

const MACHINE: &str = r#"{"vcpu_count": 2, "mem_size_mib": 256}"#;
const DRIVE: &str = r#"{"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true, "is_read_only": false}"#;
const NET: &str = r#"{"iface_id": "eth0", "host_dev_name": "tap0"}"#;

#[test]
fn get_routes() {
    assert_eq!(ok(Method::Get, "/", ""), VmmAction::GetInstanceInfo);
    assert_eq!(ok(Method::Get, "/version", ""), VmmAction::GetVersion);
    assert_eq!(ok(Method::Get, "/vm/config", ""), VmmAction::GetFullConfig);
    assert_eq!(
        ok(Method::Get, "/machine-config", ""),
        VmmAction::GetMachineConfig
    );
}

#[test]
fn actions() {
    let put = |t: &str| {
        ok(
            Method::Put,
            "/actions",
            &format!(r#"{{"action_type": "{t}"}}"#),
        )
    };
    assert_eq!(put("InstanceStart"), VmmAction::StartInstance);
    assert_eq!(put("SendCtrlAltDel"), VmmAction::SendCtrlAltDel);
    assert_eq!(put("FlushMetrics"), VmmAction::FlushMetrics);
    let msg = json_err(Method::Put, "/actions", r#"{"action_type": "Explode"}"#);
    assert!(msg.contains("unknown variant `Explode`"), "{msg}");
    let msg = json_err(Method::Put, "/actions", r#"{}"#);
    assert!(msg.contains("missing field `action_type`"), "{msg}");
    let msg = json_err(
        Method::Put,
        "/actions",
        r#"{"action_type": "InstanceStart", "x": 1}"#,
    );
    assert!(msg.contains("unknown field `x`"), "{msg}");
    assert!(matches!(
        err(Method::Put, "/actions", ""),
        RouteError::EmptyBody { .. }
    ));
}

#[test]
fn vm_state() {
    assert_eq!(
        ok(Method::Patch, "/vm", r#"{"state": "Paused"}"#),
        VmmAction::PatchVmState(VmState::Paused)
    );
    assert_eq!(
        ok(Method::Patch, "/vm", r#"{"state": "Resumed"}"#),
        VmmAction::PatchVmState(VmState::Resumed)
    );
    let msg = json_err(Method::Patch, "/vm", r#"{"state": "Stopped"}"#);
    assert!(msg.contains("unknown variant `Stopped`"), "{msg}");
    let msg = json_err(Method::Patch, "/vm", r#"{"state": 1}"#);
    assert!(msg.contains("line 1 column"), "{msg}");
    let msg = json_err(
        Method::Patch,
        "/vm",
        r#"{"state": "Paused", "force": true}"#,
    );
    assert!(msg.contains("unknown field `force`"), "{msg}");
    assert!(matches!(
        err(Method::Patch, "/vm/config", r#"{"state": "Paused"}"#),
        RouteError::InvalidPathMethod { .. }
    ));
    assert!(matches!(
        err(Method::Put, "/vm", r#"{"state": "Paused"}"#),
        RouteError::InvalidPathMethod { .. }
    ));
}

#[test]
fn boot_source() {
    match ok(
        Method::Put,
        "/boot-source",
        r#"{"kernel_image_path": "/k", "boot_args": "console=ttyS0"}"#,
    ) {
        VmmAction::PutBootSource(b) => {
            assert_eq!(b.kernel_image_path, "/k");
            assert_eq!(b.boot_args.as_deref(), Some("console=ttyS0"));
        }
        other => panic!("{other:?}"),
    }
    let msg = json_err(Method::Put, "/boot-source", r#"{"boot_args": "x"}"#);
    assert!(msg.contains("missing field `kernel_image_path`"), "{msg}");
    let msg = json_err(Method::Put, "/boot-source", r#"{"kernel_image_path": 5}"#);
    assert!(msg.contains("invalid type: integer `5`"), "{msg}");
    let msg = json_err(Method::Put, "/boot-source", r#"{"kernel_image_path": "/k""#);
    assert!(msg.contains("EOF"), "{msg}");
    assert!(matches!(
        err(Method::Put, "/boot-source", r#"{"kernel_image_path": ""}"#),
        RouteError::Invalid(_)
    ));
    assert!(matches!(
        err(Method::Get, "/boot-source", ""),
        RouteError::InvalidPathMethod { .. }
    ));
}

#[test]
fn machine_config() {
    match ok(Method::Put, "/machine-config", MACHINE) {
        VmmAction::PutMachineConfig(m) => assert_eq!((m.vcpu_count, m.mem_size_mib), (2, 256)),
        other => panic!("{other:?}"),
    }
    match ok(Method::Patch, "/machine-config", r#"{"vcpu_count": 4}"#) {
        VmmAction::PatchMachineConfig(u) => {
            assert_eq!(u.vcpu_count, Some(4));
            assert_eq!(u.mem_size_mib, None);
        }
        other => panic!("{other:?}"),
    }
    let msg = json_err(Method::Put, "/machine-config", r#"{"vcpu_count": 2}"#);
    assert!(msg.contains("missing field `mem_size_mib`"), "{msg}");
    let msg = json_err(
        Method::Put,
        "/machine-config",
        r#"{"vcpu_count": "2", "mem_size_mib": 1}"#,
    );
    assert!(msg.contains("invalid type"), "{msg}");
    let msg = json_err(Method::Patch, "/machine-config", r#"{"vcpus": 2}"#);
    assert!(msg.contains("unknown field `vcpus`"), "{msg}");
    assert!(matches!(
        err(
            Method::Put,
            "/machine-config",
            r#"{"vcpu_count": 0, "mem_size_mib": 256}"#
        ),
        RouteError::Invalid(_)
    ));
}

#[test]
fn logger_metrics_serial() {
    assert!(matches!(
        ok(
            Method::Put,
            "/logger",
            r#"{"log_path": "/tmp/log", "level": "Info"}"#
        ),
        VmmAction::PutLogger(_)
    ));
    let msg = json_err(Method::Put, "/logger", r#"{"level": "Loud"}"#);
    assert!(msg.contains("`Loud`"), "{msg}");
    assert!(matches!(
        ok(Method::Put, "/metrics", r#"{"metrics_path": "/tmp/m"}"#),
        VmmAction::PutMetrics(_)
    ));
    let msg = json_err(Method::Put, "/metrics", r#"{}"#);
    assert!(msg.contains("missing field `metrics_path`"), "{msg}");
    assert!(matches!(
        ok(Method::Put, "/serial", r#"{"serial_out_path": "/tmp/s"}"#),
        VmmAction::PutSerial(_)
    ));
    let msg = json_err(Method::Put, "/serial", r#"{"out": "/tmp/s"}"#);
    assert!(msg.contains("unknown field `out`"), "{msg}");
}

#[test]
fn drives() {
    match ok(Method::Put, "/drives/rootfs", DRIVE) {
        VmmAction::PutDrive(d) => assert_eq!(d.drive_id, "rootfs"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err(Method::Put, "/drives/other", DRIVE),
        RouteError::IdMismatch
    );
    assert_eq!(
        err(Method::Put, "/drives/", DRIVE),
        RouteError::MissingId("drive id")
    );
    assert_eq!(
        err(Method::Put, "/drives", DRIVE),
        RouteError::MissingId("drive id")
    );
    let msg = json_err(Method::Put, "/drives/rootfs", r#"{"drive_id": "rootfs"}"#);
    assert!(msg.contains("missing field"), "{msg}");
    match ok(
        Method::Patch,
        "/drives/rootfs",
        r#"{"drive_id": "rootfs", "path_on_host": "/new.ext4"}"#,
    ) {
        VmmAction::PatchDrive(u) => assert_eq!(u.path_on_host.as_deref(), Some("/new.ext4")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err(Method::Patch, "/drives/x", r#"{"drive_id": "rootfs"}"#),
        RouteError::IdMismatch
    );
    let msg = json_err(
        Method::Patch,
        "/drives/rootfs",
        r#"{"drive_id": "rootfs", "is_root_device": true}"#,
    );
    assert!(msg.contains("unknown field `is_root_device`"), "{msg}");
    assert!(matches!(
        err(Method::Get, "/drives/rootfs", ""),
        RouteError::InvalidPathMethod { .. }
    ));
}

#[test]
fn network_interfaces() {
    match ok(Method::Put, "/network-interfaces/eth0", NET) {
        VmmAction::PutNetworkInterface(n) => assert_eq!(n.host_dev_name, "tap0"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err(Method::Put, "/network-interfaces/eth1", NET),
        RouteError::IdMismatch
    );
    assert_eq!(
        err(Method::Put, "/network-interfaces", NET),
        RouteError::MissingId("network interface id")
    );
    let msg = json_err(
        Method::Put,
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": 7}"#,
    );
    assert!(msg.contains("invalid type"), "{msg}");
    assert!(matches!(
        ok(
            Method::Patch,
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "rx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#
        ),
        VmmAction::PatchNetworkInterface(_)
    ));
    assert_eq!(
        err(
            Method::Patch,
            "/network-interfaces/eth1",
            r#"{"iface_id": "eth0"}"#
        ),
        RouteError::IdMismatch
    );
}

#[test]
fn unknown_paths_and_methods() {
    for (m, p) in [
        (Method::Get, "/nope"),
        (Method::Put, "/"),
        (Method::Patch, "/version"),
        (Method::Get, "/vm"),
        (Method::Put, "/vm/config"),
        (Method::Get, "/actions"),
    ] {
        let e = err(m, p, "{}");
        assert_eq!(
            e,
            RouteError::InvalidPathMethod {
                method: m,
                path: p.to_string()
            }
        );
        assert_eq!(
            e.to_string(),
            format!("Invalid request method and/or path: {m} {p}.")
        );
    }
}

#[test]
fn unsupported_features_are_refused_by_name_never_accepted() {
    for (m, p) in [
        (Method::Patch, "/balloon/hinting/start"),
        (Method::Patch, "/balloon/hinting/stop"),
        (Method::Get, "/balloon/hinting/status"),
        (Method::Put, "/pmem/p0"),
        (Method::Patch, "/hotplug/memory"),
    ] {
        let e = err(m, p, "{}");
        assert!(
            matches!(e, RouteError::Unsupported { .. }),
            "{m} {p}: {e:?}"
        );
        assert!(
            e.to_string()
                .ends_with("is not supported by this version of xenia."),
            "{e}"
        );
    }
}

#[test]
fn a_trailing_segment_is_ignored_on_routes_that_take_none() {
    assert!(matches!(
        ok(Method::Put, "/machine-config/extra", MACHINE),
        VmmAction::PutMachineConfig(_)
    ));
    assert_eq!(ok(Method::Get, "/version/x", ""), VmmAction::GetVersion);
    assert!(matches!(
        ok(Method::Put, "/drives/rootfs/extra", DRIVE),
        VmmAction::PutDrive(_)
    ));
}

#[test]
fn route_errors_become_400_fault_messages() {
    let resp: Response = RouteError::IdMismatch.into();
    assert_eq!(resp.status, 400);
    let v: serde_json::Value =
        serde_json::from_slice(resp.body.as_deref().expect("body")).expect("json");
    assert_eq!(
        v["fault_message"],
        "The id from the path does not match the id from the body!"
    );
    let resp: Response = RouteError::Invalid(ConfigError::Unsupported("vsock")).into();
    assert_eq!(resp.status, 400);
}

#[test]
fn parse_request_reads_the_http_request() {
    let req = Request {
        method: Method::Put,
        path: "/machine-config".into(),
        query: None,
        headers: Vec::new(),
        body: MACHINE.as_bytes().to_vec(),
    };
    let parsed = parse_request(&req).expect("parses");
    assert!(!parsed.is_deprecated());
    assert!(matches!(parsed.action, VmmAction::PutMachineConfig(_)));
}

/// The (method, path) pairs documented in `api-socket/openapi.yaml`, by a line scan of its
/// `paths:` section: a path is a two-space-indented key starting with `/`, a method a
/// four-space-indented `get:`/`put:`/`patch:` key under it.
fn documented_routes() -> Vec<(Method, String)> {
    let text = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../api-socket/openapi.yaml"
    ));
    let mut routes = Vec::new();
    let mut in_paths = false;
    let mut current: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() && !line.starts_with('#') {
            in_paths = line.trim_end() == "paths:";
            current = None;
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(rest) = line.strip_prefix("  /") {
            let key = rest.trim_end().trim_end_matches(':');
            current = Some(format!("/{key}"));
        } else if let Some(rest) = line.strip_prefix("    ") {
            if rest.starts_with(' ') {
                continue;
            }
            let method = match rest.trim_end() {
                "get:" => Method::Get,
                "put:" => Method::Put,
                "patch:" => Method::Patch,
                _ => continue,
            };
            let path = current
                .clone()
                .expect("a method outside a path in openapi.yaml");
            routes.push((method, path));
        }
    }
    routes
}

#[test]
fn openapi_document_matches_the_router() {
    let documented = documented_routes();
    assert!(!documented.is_empty(), "openapi.yaml lists no paths");
    for (method, path) in &documented {
        assert!(
            ROUTES.iter().any(|(m, p)| m == method && p == path),
            "{method} {path} is documented but not routed"
        );
    }
    for (method, path) in ROUTES {
        assert!(
            documented.iter().any(|(m, p)| m == method && p == path),
            "{method} {path} is routed but not documented"
        );
    }
}

#[test]
fn every_listed_route_is_served() {
    // A concrete request for each entry of ROUTES must not come back as an unknown route.
    for (method, template) in ROUTES {
        let path = template
            .replace("{drive_id}", "rootfs")
            .replace("{iface_id}", "eth0");
        match route(*method, &path, b"{}") {
            Err(RouteError::InvalidPathMethod { .. }) | Err(RouteError::Unsupported { .. }) => {
                panic!("{method} {path} is listed in ROUTES but not served")
            }
            _ => {}
        }
    }
}

#[test]
fn bodies_that_are_not_objects_are_refused() {
    for (path, body, kind) in [
        ("/boot-source", r#"["/path"]"#, "an array"),
        ("/logger", "[]", "an array"),
        (
            "/machine-config",
            r#"[2, 256, false, false, "None"]"#,
            "an array",
        ),
        ("/actions", r#""InstanceStart""#, "a string"),
        ("/metrics", "null", "null"),
        ("/serial", " true", "a boolean"),
        ("/machine-config", "\n 12", "a number"),
        ("/drives/rootfs", "-1", "a number"),
    ] {
        assert_eq!(
            err(Method::Put, path, body),
            RouteError::NotAnObject(kind),
            "PUT {path} {body}"
        );
    }
    assert_eq!(
        err(Method::Patch, "/vm", r#"["Paused"]"#),
        RouteError::NotAnObject("an array")
    );
    let e = err(Method::Put, "/logger", "[]");
    assert_eq!(
        e.to_string(),
        "The request body must be a JSON object, not an array."
    );
    // Nested objects too.
    assert_eq!(
        err(
            Method::Put,
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true,
                "rate_limiter": {"bandwidth": [100, 0, 10]}}"#
        ),
        RouteError::ArrayForObject("rate_limiter.bandwidth".into())
    );
    assert_eq!(
        err(
            Method::Patch,
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "rx_rate_limiter": [null, null]}"#
        )
        .to_string(),
        "`rx_rate_limiter` must be a JSON object, not an array."
    );
    // Not JSON at all is still serde's syntax error.
    assert!(matches!(
        err(Method::Put, "/logger", "x"),
        RouteError::Json(_)
    ));
}

#[test]
fn an_empty_patch_is_refused_with_firecrackers_words() {
    for body in ["{}", " { } ", ""] {
        let e = err(Method::Patch, "/machine-config", body);
        assert_eq!(e, RouteError::EmptyPatch, "{body:?}");
        assert_eq!(e.to_string(), "Empty PATCH request.");
    }
    assert_eq!(err(Method::Patch, "/vm", ""), RouteError::EmptyPatch);
    assert_eq!(
        err(Method::Patch, "/drives/rootfs", r#"{"drive_id": "rootfs"}"#).to_string(),
        "Please specify at least one property to patch: path_on_host, rate_limiter."
    );
    // PUT keeps its own message.
    assert!(matches!(
        err(Method::Put, "/machine-config", ""),
        RouteError::EmptyBody { .. }
    ));
}

#[test]
fn cpu_template_marks_the_request_deprecated() {
    let parsed = route(
        Method::Put,
        "/machine-config",
        br#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "None"}"#,
    )
    .expect("parses");
    assert!(parsed.is_deprecated());
    assert_eq!(
        parsed.deprecations,
        vec!["PUT /machine-config: the cpu_template field is deprecated."]
    );
    let parsed = route(
        Method::Patch,
        "/machine-config",
        br#"{"cpu_template": "None"}"#,
    )
    .expect("parses");
    assert!(parsed.is_deprecated());
    for (method, body) in [
        (Method::Put, MACHINE),
        (Method::Patch, r#"{"vcpu_count": 2}"#),
        (
            Method::Put,
            r#"{"vcpu_count": 1, "mem_size_mib": 8, "cpu_template": null}"#,
        ),
    ] {
        let parsed = route(method, "/machine-config", body.as_bytes()).expect("parses");
        assert!(!parsed.is_deprecated(), "{method} {body}");
    }
}

#[test]
fn deprecations_are_recorded_once_each() {
    let parsed = ParsedRequest::from(VmmAction::GetVersion)
        .deprecated_if(false, "never")
        .deprecated_if(true, "test: a is deprecated.")
        .deprecated_if(true, "test: a is deprecated.")
        .deprecated_if(true, "test: b is deprecated.");
    assert_eq!(
        parsed.deprecations,
        vec!["test: a is deprecated.", "test: b is deprecated."]
    );
    let before = crate::metrics::global()
        .deprecated_api
        .deprecated_http_api_calls
        .get();
    note_deprecations(&parsed);
    note_deprecations(&parsed);
    let after = crate::metrics::global()
        .deprecated_api
        .deprecated_http_api_calls
        .get();
    assert!(after >= before + 2, "{before} -> {after}");
    assert!(!first_sighting("test: a is deprecated."));
    assert!(first_sighting("test: c is deprecated."));
    assert!(!first_sighting("test: c is deprecated."));
}

#[test]
fn cpu_config_takes_firecrackers_custom_template() {
    let body = r#"{"cpuid_modifiers": [{"leaf": "0x7", "subleaf": "0x0", "flags": 1,
        "modifiers": [{"register": "ebx", "bitmap": "0bxxxxxxxxxxxxxxx0xxxxxxxxxxxxxxxx"}]}]}"#;
    match ok(Method::Put, "/cpu-config", body) {
        VmmAction::PutCpuConfig(t) => assert_eq!(t.cpuid_modifiers.len(), 1),
        other => panic!("{other:?}"),
    }
    let msg = json_err(
        Method::Put,
        "/cpu-config",
        r#"{"msr_modifiers": [{"addr": "0x10a", "bitmap": "0b0"}]}"#,
    );
    assert!(msg.contains("msr_modifiers"), "{msg}");
    let msg = json_err(
        Method::Put,
        "/cpu-config",
        r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0",
            "modifiers": [{"register": "exx", "bitmap": "0b0"}]}]}"#,
    );
    assert!(msg.contains("unknown variant `exx`"), "{msg}");
}

#[test]
fn snapshot_routes() {
    let create = r#"{"snapshot_path": "/s", "mem_file_path": "/m", "snapshot_type": "Diff"}"#;
    assert!(matches!(
        ok(Method::Put, "/snapshot/create", create),
        VmmAction::CreateSnapshot(_)
    ));
    let msg = json_err(
        Method::Put,
        "/snapshot/create",
        r#"{"snapshot_path": "/s", "mem_file_path": "/m", "version": "1.0.0"}"#,
    );
    assert!(msg.contains("unknown field `version`"), "{msg}");
    let load =
        r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#;
    let parsed = route(Method::Put, "/snapshot/load", load.as_bytes()).unwrap();
    assert!(!parsed.is_deprecated());
    assert!(matches!(parsed.action, VmmAction::LoadSnapshot(_)));
    // The deprecated memory field answers with a Deprecation header.
    let old = r#"{"snapshot_path": "/s", "mem_file_path": "/m", "enable_diff_snapshots": true}"#;
    assert_eq!(
        route(Method::Put, "/snapshot/load", old.as_bytes())
            .unwrap()
            .deprecations
            .len(),
        2
    );
    assert!(matches!(
        err(Method::Put, "/snapshot/load", r#"{"snapshot_path": "/s"}"#),
        RouteError::Invalid(_)
    ));
    assert!(matches!(
        err(Method::Put, "/snapshot/other", "{}"),
        RouteError::InvalidPathMethod { .. }
    ));
    assert!(matches!(
        err(Method::Get, "/snapshot/create", ""),
        RouteError::InvalidPathMethod { .. }
    ));
}

#[test]
fn put_entropy_takes_an_optional_rate_limiter_and_refuses_unknown_fields() {
    let r = |body: &str| {
        parse_request(&Request {
            method: Method::Put,
            path: "/entropy".into(),
            query: None,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        })
    };
    let Ok(p) = r("{}") else {
        panic!("an empty entropy body is valid")
    };
    assert_eq!(
        p.action,
        VmmAction::PutEntropy(crate::config::EntropyDeviceConfig::default())
    );
    let Ok(p) = r(r#"{"rate_limiter": {"ops": {"size": 10, "refill_time": 1000}}}"#) else {
        panic!("a limited entropy body is valid")
    };
    let VmmAction::PutEntropy(c) = p.action else {
        panic!("not PutEntropy")
    };
    assert_eq!(c.rate_limiter.and_then(|l| l.ops).map(|o| o.size), Some(10));
    let e = r(r#"{"bytes_per_s": 1}"#).unwrap_err().to_string();
    assert!(e.contains("unknown field `bytes_per_s`"), "{e}");
}

#[test]
fn put_vsock_takes_firecrackers_body_and_marks_vsock_id_deprecated() {
    let r = |path: &str, body: &str| {
        parse_request(&Request {
            method: Method::Put,
            path: path.into(),
            query: None,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        })
    };
    let Ok(p) = r("/vsock", r#"{"guest_cid": 3, "uds_path": "/tmp/v.sock"}"#) else {
        panic!("a plain vsock body is valid")
    };
    assert!(!p.is_deprecated());
    let VmmAction::PutVsock(c) = p.action else {
        panic!("not PutVsock")
    };
    assert_eq!((c.guest_cid, c.uds_path.as_str()), (3, "/tmp/v.sock"));
    // The deprecated id, and the trailing path segment Firecracker's clients send.
    let Ok(p) = r(
        "/vsock/vsock0",
        r#"{"vsock_id": "vsock0", "guest_cid": 4, "uds_path": "/v"}"#,
    ) else {
        panic!("vsock_id is accepted")
    };
    assert!(p.is_deprecated());
    for (body, needle) in [
        (r#"{"guest_cid": 2, "uds_path": "/v"}"#, "guest_cid"),
        (r#"{"guest_cid": 3, "uds_path": ""}"#, "uds_path"),
        (r#"{"guest_cid": 3}"#, "uds_path"),
        (
            r#"{"guest_cid": 3, "uds_path": "/v", "x": 1}"#,
            "unknown field",
        ),
    ] {
        let e = r("/vsock", body).unwrap_err().to_string();
        assert!(e.contains(needle), "{body}: {e}");
    }
}

#[test]
fn balloon_routes_parse_firecrackers_bodies() {
    assert!(matches!(
        ok(
            Method::Put,
            "/balloon",
            r#"{"amount_mib": 16, "deflate_on_oom": true, "stats_polling_interval_s": 2}"#
        ),
        VmmAction::PutBalloon(b) if b.amount_mib == 16 && b.stats_polling_interval_s == 2
    ));
    assert_eq!(
        ok(Method::Patch, "/balloon", r#"{"amount_mib": 3}"#),
        VmmAction::PatchBalloon(crate::config::BalloonUpdate { amount_mib: 3 })
    );
    assert_eq!(ok(Method::Get, "/balloon", ""), VmmAction::GetBalloonConfig);
    assert_eq!(
        ok(Method::Get, "/balloon/statistics", ""),
        VmmAction::GetBalloonStats
    );
    assert_eq!(
        ok(
            Method::Patch,
            "/balloon/statistics",
            r#"{"stats_polling_interval_s": 5}"#
        ),
        VmmAction::PatchBalloonStats(crate::config::BalloonStatsUpdate {
            stats_polling_interval_s: 5
        })
    );
    let e = err(
        Method::Put,
        "/balloon",
        r#"{"amount_mib": 1, "deflate_on_oom": false, "free_page_hinting": true}"#,
    );
    assert!(e.to_string().contains("free page hinting"), "{e}");
    assert!(matches!(
        err(Method::Put, "/balloon/statistics", "{}"),
        RouteError::InvalidPathMethod { .. }
    ));
    assert!(matches!(
        err(
            Method::Patch,
            "/balloon",
            r#"{"amount_mib": 1, "deflate_on_oom": true}"#
        ),
        RouteError::Json(_)
    ));
}
