//! Many clients at once, and clients that misbehave, never block the others.

mod common;

use std::io::{Read, Write};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

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

fn with_timeout(ms: u64) -> ServerOptions {
    ServerOptions {
        request_timeout: Duration::from_millis(ms),
        ..ServerOptions::default()
    }
}

#[test]
fn a_request_never_finished_is_answered_400_and_closed_at_its_deadline() {
    let server = TestServer::start("deadline", with_timeout(300));
    let mut slow = server.connect();
    let started = Instant::now();
    slow.write_all(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 35\r\n\r\n{")
        .expect("send half");
    let text = String::from_utf8(read_to_close(&mut slow)).expect("ascii");
    let waited = started.elapsed();
    assert!(text.starts_with("HTTP/1.1 400 \r\n"), "{text}");
    assert!(
        text.contains("Request not received in full within 300 ms."),
        "{text}"
    );
    assert!(text.contains("Connection: close"), "{text}");
    assert!(
        waited >= Duration::from_millis(300),
        "closed early: {waited:?}"
    );
    // Others are served meanwhile and afterwards.
    let mut s = server.connect();
    assert_eq!(roundtrip(&mut s, GET_ROOT).status, 200);
}

#[test]
fn trickling_bytes_does_not_extend_the_deadline() {
    let server = TestServer::start("trickle", with_timeout(400));
    let mut slow = server.connect();
    let started = Instant::now();
    let header = b"GET / HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed = false;
    for byte in header.iter() {
        if slow.write_all(std::slice::from_ref(byte)).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    if !closed {
        let text = String::from_utf8_lossy(&read_to_close(&mut slow)).into_owned();
        assert!(text.contains("HTTP/1.1 400 "), "{text}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a trickling client kept its connection for {:?}",
        started.elapsed()
    );
}

#[test]
fn an_idle_connection_has_no_deadline() {
    let server = TestServer::start("idle", with_timeout(100));
    let mut s = server.connect();
    assert_eq!(roundtrip(&mut s, GET_ROOT).status, 200);
    // Several deadlines' worth of silence between two requests is fine (clients pool).
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(roundtrip(&mut s, GET_ROOT).status, 200);
}

#[test]
fn when_all_are_busy_the_oldest_request_goes_not_the_least_recently_active() {
    let options = ServerOptions {
        max_connections: 2,
        ..ServerOptions::default()
    };
    let server = TestServer::start("evict-busy", options);
    let mut trickler = server.connect();
    trickler.write_all(b"GET / HTTP/1.1\r\n").expect("start");
    // Make sure the server has seen the trickler's request start before the other's.
    let mut probe = server.connect();
    assert_eq!(roundtrip(&mut probe, GET_ROOT).status, 200);
    drop(probe);
    let mut honest = server.connect();
    honest
        .write_all(b"GET /honest HTTP/1.1\r\n")
        .expect("start");
    // The trickler is now the most recently active, but its request is the older one.
    trickler.write_all(b"X-A: 1\r\n").expect("trickle");
    let mut check = server.connect();
    // `check` evicts someone when it connects; its own request must be served.
    assert_eq!(roundtrip(&mut check, GET_ROOT).status, 200);
    let mut buf = [0u8; 64];
    assert_eq!(
        trickler.read(&mut buf).unwrap_or(0),
        0,
        "trickler should be closed"
    );
    honest.write_all(b"\r\n").expect("finish");
    let mut pending = Vec::new();
    let resp = read_response(&mut honest, &mut pending);
    assert!(resp.body_str().contains("/honest"), "{}", resp.body_str());
}
