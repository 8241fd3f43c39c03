//! Requests and answers on one connection: bytes, keep-alive, pipelining, errors.

mod common;

use std::io::Write;

use api_socket::ServerOptions;
use common::*;

#[test]
fn no_content_answer_is_firecracker_shaped() {
    let server = TestServer::start("nocontent", ServerOptions::default());
    let mut s = server.connect();
    let resp = roundtrip(&mut s, PUT_MACHINE);
    assert_eq!(resp.status_line, "HTTP/1.1 204 ");
    assert_eq!(resp.header("content-length"), None);
    assert_eq!(resp.header("content-type"), None);
    assert_eq!(resp.header("connection"), Some("keep-alive"));
    assert!(resp.body.is_empty());
}

#[test]
fn json_answer_carries_type_and_length() {
    let server = TestServer::start("json", ServerOptions::default());
    let mut s = server.connect();
    let resp = roundtrip(&mut s, GET_ROOT);
    assert_eq!(resp.status_line, "HTTP/1.1 200 ");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.body_str(), "{\"path\":\"/\",\"seq\":1,\"len\":0}");
}

#[test]
fn deprecation_header_reaches_the_wire() {
    let server = TestServer::start("deprecated", ServerOptions::default());
    let mut s = server.connect();
    let resp = roundtrip(&mut s, b"GET /deprecated HTTP/1.1\r\n\r\n");
    assert_eq!(resp.header("deprecation"), Some("true"));
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let server = TestServer::start("keepalive", ServerOptions::default());
    let mut s = server.connect();
    for i in 1..=200u32 {
        let resp = roundtrip(&mut s, GET_ROOT);
        assert_eq!(resp.status, 200);
        assert!(
            resp.body_str().contains(&format!("\"seq\":{},", 2 * i - 1)),
            "{}",
            resp.body_str()
        );
        assert_eq!(roundtrip(&mut s, PUT_MACHINE).status, 204);
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::start("pipeline", ServerOptions::default());
    let mut s = server.connect();
    let mut batch = Vec::new();
    for i in 0..50 {
        batch.extend_from_slice(format!("GET /echo/{i} HTTP/1.1\r\n\r\n").as_bytes());
        batch.extend_from_slice(PUT_MACHINE);
    }
    s.write_all(&batch).expect("send batch");
    let mut pending = Vec::new();
    for i in 0..50 {
        let get = read_response(&mut s, &mut pending);
        assert!(
            get.body_str()
                .starts_with(&format!("{{\"path\":\"/echo/{i}\"")),
            "{}",
            get.body_str()
        );
        assert_eq!(read_response(&mut s, &mut pending).status, 204);
    }
}

#[test]
fn request_split_across_many_writes_is_reassembled() {
    let server = TestServer::start("split", ServerOptions::default());
    let mut s = server.connect();
    let req = b"GET /split HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
    for byte in req.iter() {
        s.write_all(std::slice::from_ref(byte)).expect("send byte");
    }
    let mut pending = Vec::new();
    let resp = read_response(&mut s, &mut pending);
    assert_eq!(resp.body_str(), "{\"path\":\"/split\",\"seq\":1,\"len\":3}");
}

#[test]
fn connection_close_is_ignored_as_firecracker_does() {
    // Firecracker answers `Connection: keep-alive` and keeps the connection whatever the
    // request's `Connection` header says; a client written against it may send `close` and
    // still reuse the socket.
    let server = TestServer::start("close", ServerOptions::default());
    let mut s = server.connect();
    s.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        .expect("send");
    let mut pending = Vec::new();
    for _ in 0..2 {
        let resp = read_response(&mut s, &mut pending);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("connection"), Some("keep-alive"));
    }
    // The client closing is what ends it.
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert!(read_to_close(&mut s).is_empty());
}

#[test]
fn http10_client_makes_ten_requests_on_one_connection() {
    // As with Firecracker: no `Connection` header, and the connection stays open.
    let server = TestServer::start("http10", ServerOptions::default());
    let mut s = server.connect();
    for i in 0..10 {
        let req = format!("GET /echo/{i} HTTP/1.0\r\n\r\n");
        let resp = roundtrip(&mut s, req.as_bytes());
        assert_eq!(resp.status_line, "HTTP/1.1 200 ");
        assert_eq!(resp.header("connection"), Some("keep-alive"));
        assert!(
            resp.body_str()
                .starts_with(&format!("{{\"path\":\"/echo/{i}\"")),
            "{}",
            resp.body_str()
        );
        let put = b"PUT /machine-config HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(roundtrip(&mut s, put).status, 204);
    }
}

#[test]
fn http10_with_connection_close_stays_open_too() {
    let server = TestServer::start("http10close", ServerOptions::default());
    let mut s = server.connect();
    let resp = roundtrip(&mut s, b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n");
    assert_eq!(resp.header("connection"), Some("keep-alive"));
    assert_eq!(roundtrip(&mut s, GET_ROOT).status, 200);
}

#[test]
fn absolute_form_targets_are_served_by_their_path() {
    let server = TestServer::start("absolute", ServerOptions::default());
    let mut s = server.connect();
    let resp = roundtrip(
        &mut s,
        b"PUT http://localhost/machine-config HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(resp.status, 204);
    let resp = roundtrip(
        &mut s,
        b"GET http://localhost:8080/echo/abs HTTP/1.1\r\n\r\n",
    );
    assert!(
        resp.body_str().starts_with("{\"path\":\"/echo/abs\""),
        "{}",
        resp.body_str()
    );
    // A target that is neither form gets a 400 and the connection goes on.
    let resp = roundtrip(&mut s, b"GET ftp://localhost/x HTTP/1.1\r\n\r\n");
    assert_eq!(resp.status, 400);
    assert!(
        resp.body_str().contains("request target"),
        "{}",
        resp.body_str()
    );
    assert_eq!(roundtrip(&mut s, GET_ROOT).status, 200);
}

#[test]
fn content_length_must_be_plain_digits() {
    let server = TestServer::start("clen", ServerOptions::default());
    for bad in ["+2", "-0", "0x2", "2 2", "2,2"] {
        let mut s = server.connect();
        let req = format!("PUT /mmds HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n{{}}");
        s.write_all(req.as_bytes()).expect("send");
        let text = String::from_utf8(read_to_close(&mut s)).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 400 \r\n"), "{bad}: {text}");
        assert!(text.contains("Invalid Content-Length"), "{bad}: {text}");
    }
}

#[test]
fn garbage_gets_400_and_the_connection_closes() {
    let server = TestServer::start("garbage", ServerOptions::default());
    let mut s = server.connect();
    s.write_all(b"\x16\x03\x01 hello there\r\n\r\n")
        .expect("send");
    let text = String::from_utf8(read_to_close(&mut s)).expect("ascii");
    assert!(text.starts_with("HTTP/1.1 400 \r\n"), "{text}");
    assert!(
        text.contains("{\"fault_message\":\"Invalid HTTP request"),
        "{text}"
    );
    assert!(text.contains("Connection: close"), "{text}");
}

#[test]
fn body_without_content_length_is_refused() {
    let server = TestServer::start("nolength", ServerOptions::default());
    let mut s = server.connect();
    // Without Content-Length the JSON is read as the next request line: a 400, then close.
    s.write_all(b"PUT /machine-config HTTP/1.1\r\n\r\n{\"vcpu_count\": 2}\r\n\r\n")
        .expect("send");
    let text = String::from_utf8(read_to_close(&mut s)).expect("ascii");
    assert!(text.starts_with("HTTP/1.1 204 \r\n"), "{text}");
    assert!(text.contains("HTTP/1.1 400 \r\n"), "{text}");
}

#[test]
fn chunked_transfer_encoding_is_refused() {
    let server = TestServer::start("chunked", ServerOptions::default());
    let mut s = server.connect();
    s.write_all(b"PUT /mmds HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
        .expect("send");
    let text = String::from_utf8(read_to_close(&mut s)).expect("ascii");
    assert!(text.starts_with("HTTP/1.1 400 \r\n"), "{text}");
    assert!(text.contains("Transfer-Encoding"), "{text}");
}

#[test]
fn unsupported_method_gets_400_and_the_connection_goes_on() {
    let server = TestServer::start("method", ServerOptions::default());
    let mut s = server.connect();
    let resp = roundtrip(
        &mut s,
        b"DELETE /drives/a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.body_str(),
        "{\"fault_message\":\"Unsupported HTTP method: DELETE.\"}"
    );
    assert_eq!(roundtrip(&mut s, GET_ROOT).status, 200);
}

#[test]
fn payload_over_the_limit_gets_400_and_close() {
    let options = ServerOptions {
        max_payload: 1000,
        ..ServerOptions::default()
    };
    let server = TestServer::start("payload", options);
    let mut s = server.connect();
    let mut req = b"PUT /mmds HTTP/1.1\r\nContent-Length: 1001\r\n\r\n".to_vec();
    req.resize(req.len() + 1001, b' ');
    // The server may close before it has read the whole body: a failed write is fine.
    let _ = s.write_all(&req);
    let text = String::from_utf8(read_to_close(&mut s)).expect("ascii");
    assert!(text.starts_with("HTTP/1.1 400 \r\n"), "{text}");
    assert!(
        text.contains("Request payload with size 1001 is larger than the limit of 1000"),
        "{text}"
    );

    // Exactly at the limit is accepted.
    let mut s = server.connect();
    let mut req = b"PUT /mmds HTTP/1.1\r\nContent-Length: 1000\r\n\r\n".to_vec();
    req.resize(req.len() + 1000, b' ');
    assert_eq!(roundtrip(&mut s, &req).status, 204);
}

#[test]
fn default_payload_limit_is_51200() {
    assert_eq!(ServerOptions::default().max_payload, 51_200);
    assert!(ServerOptions::default().max_connections >= 64);
}

#[test]
fn expect_continue_gets_an_interim_answer() {
    let server = TestServer::start("continue", ServerOptions::default());
    let mut s = server.connect();
    s.write_all(b"PUT /mmds HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        .expect("send headers");
    let mut pending = Vec::new();
    let interim = read_response(&mut s, &mut pending);
    assert_eq!(interim.status_line, "HTTP/1.1 100 ");
    s.write_all(b"{}").expect("send body");
    assert_eq!(read_response(&mut s, &mut pending).status, 204);
}
