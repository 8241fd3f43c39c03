//! The API under load, against a real xenia: many concurrent clients, connections opened
//! and dropped, a slow client holding half a request.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::Barrier;

use xenia_integration_tests::api::{format_request, read_response, ApiClient};
use xenia_integration_tests::Xenia;

const MACHINE: &str = r#"{"vcpu_count": 1, "mem_size_mib": 64}"#;

/// Sends `count` requests on one connection, alternating GET / and PUT /machine-config;
/// returns how many were answered with the expected status.
fn keep_alive_client(api: &ApiClient, count: usize, start: &Barrier) -> Result<usize, String> {
    let mut stream = api.connect()?;
    start.wait();
    let mut good = 0;
    for i in 0..count {
        let (req, want) = if i % 2 == 0 {
            (format_request("GET", "/", ""), 200)
        } else {
            (format_request("PUT", "/machine-config", MACHINE), 204)
        };
        stream.write_all(&req).map_err(|e| format!("write: {e}"))?;
        let r = read_response(&mut stream)?;
        good += usize::from(r.status == want);
    }
    Ok(good)
}

#[test]
fn sixty_four_concurrent_clients_are_all_answered() {
    const CLIENTS: usize = 64;
    const REQUESTS: usize = 25;
    let (_x, api) = Xenia::with_api(&[]);
    let start = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let api = api.clone();
            let start = start.clone();
            std::thread::spawn(move || keep_alive_client(&api, REQUESTS, &start))
        })
        .collect();
    for t in threads {
        let good = t.join().expect("client thread").expect("client");
        assert_eq!(good, REQUESTS);
    }
    assert_eq!(
        api.expect("GET", "/", "", 200).json()["state"],
        "Not started"
    );
}

#[test]
fn dropped_connections_and_a_slow_client_do_not_block_others() {
    let (_x, api) = Xenia::with_api(&[]);
    // A client that sends half a request and then waits.
    let mut slow = api.connect().unwrap();
    let request = format_request("PUT", "/machine-config", MACHINE);
    let half = request.len() / 2;
    slow.write_all(&request[..half]).unwrap();

    // 1,000 connections opened and dropped, a third of them mid-request, while clients work.
    let dropper = {
        let api = api.clone();
        std::thread::spawn(move || {
            for i in 0..1000 {
                let mut s = UnixStream::connect(&api.socket).expect("connect");
                if i % 3 == 0 {
                    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x");
                }
            }
        })
    };
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let api = api.clone();
            std::thread::spawn(move || {
                (0..50)
                    .filter(|_| api.call("GET", "/", "").status == 200)
                    .count()
            })
        })
        .collect();
    dropper.join().expect("dropper");
    for w in workers {
        assert_eq!(w.join().expect("worker"), 50);
    }

    // The slow client finishes its request and is answered.
    slow.write_all(&request[half..]).unwrap();
    let r = read_response(&mut slow).unwrap();
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    api.expect("GET", "/", "", 200);
}
