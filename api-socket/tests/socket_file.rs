//! The socket file's life: live servers are not replaced, stale files are, drop removes it.

mod common;

use std::os::unix::net::UnixListener;

use api_socket::{ApiServer, ApiServerError, ServerOptions};
use common::*;

#[test]
fn second_bind_on_a_live_socket_fails_clearly() {
    let server = TestServer::start("live", ServerOptions::default());
    let err = ApiServer::bind(&server.path, ServerOptions::default()).expect_err("must fail");
    assert!(
        matches!(err, ApiServerError::AddressInUse { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&server.path.display().to_string()), "{text}");
    assert!(text.contains("already serving"), "{text}");
    // The first server is unharmed.
    let mut s = server.connect();
    assert_eq!(roundtrip(&mut s, GET_ROOT).status, 200);
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let path = socket_path("stale");
    drop(UnixListener::bind(&path).expect("bind stale"));
    assert!(path.exists(), "std leaves the socket file behind");
    let server = ApiServer::bind(&path, ServerOptions::default()).expect("replace stale");
    drop(server);
    assert!(!path.exists());
}

#[test]
fn a_path_that_is_not_a_socket_is_never_removed() {
    let path = socket_path("regular");
    std::fs::write(&path, b"precious").expect("write file");
    let err = ApiServer::bind(&path, ServerOptions::default()).expect_err("must fail");
    assert!(matches!(err, ApiServerError::NotASocket { .. }), "{err:?}");
    assert_eq!(std::fs::read(&path).expect("still there"), b"precious");
    std::fs::remove_file(&path).expect("cleanup");
}

#[test]
fn the_socket_file_is_removed_on_drop() {
    let path = socket_path("drop");
    let server = ApiServer::bind(&path, ServerOptions::default()).expect("bind");
    assert!(path.exists());
    drop(server);
    assert!(!path.exists());
}

#[test]
fn shutdown_event_stops_the_server_and_removes_the_socket() {
    let server = TestServer::start("shutdown", ServerOptions::default());
    let path = server.path.clone();
    server.stop();
    assert!(!path.exists());
}

#[test]
fn invalid_options_are_refused() {
    let path = socket_path("opts");
    let options = ServerOptions {
        max_connections: 0,
        ..ServerOptions::default()
    };
    let err = ApiServer::bind(&path, options).expect_err("must fail");
    assert!(err.to_string().contains("max_connections"), "{err}");
    assert!(!path.exists());
}
