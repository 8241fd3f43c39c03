//! Many clients at once, and clients that misbehave, never block the others.

mod common;

use std::io::{Read, Write};
use std::sync::{Arc, Barrier};

use api_socket::ServerOptions;
use common::*;

#[test]
fn sixty_four_concurrent_clients_are_all_served() {
    let server = TestServer::start("conc64", ServerOptions::default());
    let barrier = Arc::new(Barrier::new(64));
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let path = server.path.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut s = connect(&path);
                // Every client holds its connection open before any of them sends.
                barrier.wait();
                for j in 0..20 {
                    let req = format!("GET /c/{i}/{j} HTTP/1.1\r\n\r\n");
                    let resp = roundtrip(&mut s, req.as_bytes());
                    assert_eq!(resp.status, 200);
                    assert!(resp.body_str().contains(&format!("/c/{i}/{j}")));
                    assert_eq!(roundtrip(&mut s, PUT_MACHINE).status, 204);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}

#[test]
fn a_thousand_connections_opened_and_dropped() {
    let server = TestServer::start("churn", ServerOptions::default());
    for i in 0..1000 {
        let mut s = server.connect();
        match i % 3 {
            0 => {}
            1 => {
                let _ = s.write_all(b"GET / HT");
            }
            _ => assert_eq!(roundtrip(&mut s, GET_ROOT).status, 200),
        }
    }
    let mut s = server.connect();
    assert_eq!(roundtrip(&mut s, GET_ROOT).status, 200);
}

#[test]
fn a_slow_client_holding_half_a_request_does_not_block_others() {
    let server = TestServer::start("slow", ServerOptions::default());
    let mut slow = server.connect();
    slow.write_all(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 35\r\n\r\n{\"vcpu")
        .expect("send half");
    let mut silent = server.connect();
    for _ in 0..50 {
        let mut s = server.connect();
        assert_eq!(roundtrip(&mut s, GET_ROOT).status, 200);
    }
    // The slow client finishes later and is answered too.
    slow.write_all(b"_count\":2,\"mem_size_mib\":256}")
        .expect("send rest");
    let mut pending = Vec::new();
    assert_eq!(read_response(&mut slow, &mut pending).status, 204);
    // The silent one still works.
    assert_eq!(roundtrip(&mut silent, GET_ROOT).status, 200);
}

#[test]
fn a_client_that_never_reads_does_not_block_others() {
    let server = TestServer::start("noread", ServerOptions::default());
    let mut greedy = server.connect();
    // Far more pipelined requests than socket buffers can hold answers for.
    let mut batch = Vec::new();
    for _ in 0..2000 {
        batch.extend_from_slice(GET_ROOT);
    }
    greedy.write_all(&batch).expect("send batch");
    for _ in 0..20 {
        let mut s = server.connect();
        assert_eq!(roundtrip(&mut s, GET_ROOT).status, 200);
    }
    // Draining the greedy client yields all its answers.
    let mut pending = Vec::new();
    for _ in 0..2000 {
        assert_eq!(read_response(&mut greedy, &mut pending).status, 200);
    }
}

#[test]
fn past_the_limit_the_least_recently_used_idle_connection_is_closed() {
    let options = ServerOptions {
        max_connections: 3,
        ..ServerOptions::default()
    };
    let server = TestServer::start("lru", options);
    let mut oldest = server.connect();
    assert_eq!(roundtrip(&mut oldest, GET_ROOT).status, 200);
    let mut middle = server.connect();
    assert_eq!(roundtrip(&mut middle, GET_ROOT).status, 200);
    let mut busy = server.connect();
    // Half a request: not idle, so not the first to go even though oldest was used before.
    busy.write_all(b"GET / HTTP/1.1\r\n").expect("send half");
    assert_eq!(roundtrip(&mut oldest, GET_ROOT).status, 200);
    // Now `middle` is the least recently used idle connection.
    let mut newcomer = server.connect();
    assert_eq!(roundtrip(&mut newcomer, GET_ROOT).status, 200);
    let mut buf = [0u8; 16];
    assert_eq!(
        middle.read(&mut buf).expect("read eof"),
        0,
        "middle should be closed"
    );
    assert_eq!(roundtrip(&mut oldest, GET_ROOT).status, 200);
    busy.write_all(b"\r\n").expect("finish request");
    let mut pending = Vec::new();
    assert_eq!(read_response(&mut busy, &mut pending).status, 200);
}
