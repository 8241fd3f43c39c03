//! `bench-api <socket> [--requests N] [--clients N] [--json]`: measures the latency of
//! `GET /` and `PUT /machine-config` on a running xenia's API socket, first on one
//! keep-alive connection, then with many concurrent clients, and prints median and p99.
//!
//! `bench-api <socket> --xenia <path-to-xenia>` starts that xenia (pre-boot, nothing
//! configured) with `--api-sock <socket>`, measures it, and stops it.
//!
//! `bench-api <socket> --xenia <path> --cold N` starts N fresh xenias one after another and
//! times the first requests each process serves (`GET /` #1, #2 and #10, `PUT
//! /machine-config` #1 and #2, one connection, after the socket has answered a connect and
//! 20 ms have passed so start-up itself is not counted): the cost of the process's cold path.
//!
//! `bench-api --serve <socket>` runs a stand-in server on the `api-socket` crate that
//! answers those two routes the way xenia does, to test the benchmark without a VM.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use api_socket::{ApiServer, Method, Response, ServerOptions};

const GET_ROOT: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n";
const MACHINE_BODY: &str = r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false}"#;

struct Args {
    socket: PathBuf,
    requests: usize,
    clients: usize,
    json: bool,
    serve: bool,
    xenia: Option<PathBuf>,
    cold: Option<usize>,
}

fn usage() -> String {
    "usage: bench-api <socket> [--requests N] [--clients N] [--json] [--xenia PATH [--cold N]]\n       bench-api --serve <socket>"
        .to_string()
}

fn parse_args() -> Result<Args, String> {
    let mut socket = None;
    let mut requests = 10_000;
    let mut clients = 64;
    let mut json = false;
    let mut serve = false;
    let mut xenia = None;
    let mut cold = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> Result<usize, String> {
            let v = it.next().ok_or(format!("{name} needs a value"))?;
            v.parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or(format!("{name}: {v:?} is not a positive number"))
        };
        match arg.as_str() {
            "--requests" => requests = number("--requests")?,
            "--clients" => clients = number("--clients")?,
            "--json" => json = true,
            "--cold" => cold = Some(number("--cold")?),
            "--serve" => serve = true,
            "--xenia" => xenia = Some(PathBuf::from(it.next().ok_or("--xenia needs a path")?)),
            "-h" | "--help" => return Err(usage()),
            a if a.starts_with("--") => return Err(format!("unknown option {a}\n{}", usage())),
            a => socket = Some(PathBuf::from(a)),
        }
    }
    let socket = socket.ok_or_else(usage)?;
    Ok(Args {
        socket,
        requests,
        clients,
        json,
        serve,
        xenia,
        cold,
    })
}

/// One keep-alive connection that sends a request and reads exactly its answer.
struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(path: &std::path::Path) -> Result<Client, String> {
        let stream = UnixStream::connect(path)
            .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        Ok(Client {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends `request`, waits for the answer, checks its status, returns the latency.
    fn call(&mut self, request: &[u8], expect_status: u16) -> Result<Duration, String> {
        let start = Instant::now();
        self.stream
            .write_all(request)
            .map_err(|e| format!("send: {e}"))?;
        let status = self.read_response()?;
        let elapsed = start.elapsed();
        if status != expect_status {
            return Err(format!("expected status {expect_status}, got {status}"));
        }
        Ok(elapsed)
    }

    fn read_response(&mut self) -> Result<u16, String> {
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("server closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or(format!("bad status line in {head:?}"))?;
        let body_len = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while self.buf.len() < head_end + body_len {
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("server closed the connection mid-body".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        self.buf.drain(..head_end + body_len);
        Ok(status)
    }
}

struct Stats {
    name: String,
    count: usize,
    median_us: f64,
    p99_us: f64,
    max_us: f64,
    per_second: f64,
}

fn stats(name: &str, mut samples: Vec<Duration>, wall: Duration) -> Stats {
    samples.sort_unstable();
    let pick = |q: f64| -> f64 {
        let idx = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples
            .get(idx)
            .map(|d| d.as_secs_f64() * 1e6)
            .unwrap_or(0.0)
    };
    Stats {
        name: name.to_string(),
        count: samples.len(),
        median_us: pick(0.5),
        p99_us: pick(0.99),
        max_us: pick(1.0),
        per_second: samples.len() as f64 / wall.as_secs_f64().max(1e-9),
    }
}

fn put_machine_request() -> Vec<u8> {
    format!(
        "PUT /machine-config HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        MACHINE_BODY.len(),
        MACHINE_BODY
    )
    .into_bytes()
}

fn sequential(args: &Args, name: &str, request: &[u8], status: u16) -> Result<Stats, String> {
    let mut client = Client::connect(&args.socket)?;
    // A few warm-up calls, not counted.
    for _ in 0..100 {
        client.call(request, status)?;
    }
    let start = Instant::now();
    let samples = (0..args.requests)
        .map(|_| client.call(request, status))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(stats(name, samples, start.elapsed()))
}

fn concurrent(args: &Args, name: &str, request: &[u8], status: u16) -> Result<Stats, String> {
    let per_client = args.requests.div_ceil(args.clients);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(args.clients));
    let start = Instant::now();
    let threads: Vec<_> = (0..args.clients)
        .map(|_| {
            let path = args.socket.clone();
            let request = request.to_vec();
            let barrier = barrier.clone();
            std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                let client = Client::connect(&path);
                barrier.wait();
                let mut client = client?;
                (0..per_client)
                    .map(|_| client.call(&request, status))
                    .collect()
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(per_client * args.clients);
    for t in threads {
        samples.extend(
            t.join()
                .map_err(|_| "client thread panicked".to_string())??,
        );
    }
    Ok(stats(name, samples, start.elapsed()))
}

fn serve(path: &std::path::Path) -> Result<(), String> {
    let server = ApiServer::bind(path, ServerOptions::default()).map_err(|e| e.to_string())?;
    eprintln!("bench-api: stand-in server on {}", path.display());
    server
        .run(|req| match (req.method, req.path.as_str()) {
            (Method::Get, "/") => Response::json(
                200,
                br#"{"id":"anonymous-instance","state":"Not started","vmm_version":"0.1.0","app_name":"xenia"}"#
                    .to_vec(),
            ),
            (Method::Put, "/machine-config") if !req.body.is_empty() => Response::no_content(),
            _ => Response::fault(400, "Invalid request method and/or path."),
        })
        .map_err(|e| e.to_string())
}

/// A xenia started for the measurement; killed (and its socket removed) on drop.
struct SpawnedXenia {
    child: std::process::Child,
    socket: PathBuf,
}

impl SpawnedXenia {
    fn start(binary: &std::path::Path, socket: &std::path::Path) -> Result<Self, String> {
        let child = std::process::Command::new(binary)
            .arg("--api-sock")
            .arg(socket)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let this = SpawnedXenia {
            child,
            socket: socket.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(socket).is_err() {
            if Instant::now() > deadline {
                return Err(format!("xenia never listened on {}", socket.display()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(this)
    }
}

impl Drop for SpawnedXenia {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// `--cold N`: the first requests of N fresh processes.
fn cold(args: &Args, binary: &std::path::Path, runs: usize) -> Result<(), String> {
    const NAMES: [&str; 6] = [
        "GET / #1",
        "GET / #2",
        "PUT /machine-config #1",
        "PUT /machine-config #2",
        "GET / #10",
        "GET / #11, 20 ms idle",
    ];
    let put = put_machine_request();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); NAMES.len()];
    for _ in 0..runs {
        let _xenia = SpawnedXenia::start(binary, &args.socket)?;
        let mut client = Client::connect(&args.socket)?;
        // Whatever the process still does after it started listening is not the cold path.
        std::thread::sleep(Duration::from_millis(20));
        samples[0].push(client.call(GET_ROOT, 200)?);
        samples[1].push(client.call(GET_ROOT, 200)?);
        samples[2].push(client.call(&put, 204)?);
        samples[3].push(client.call(&put, 204)?);
        for _ in 3..9 {
            client.call(GET_ROOT, 200)?;
        }
        samples[4].push(client.call(GET_ROOT, 200)?);
        // The same wait as before #1: what idling costs the next request, cold path or not.
        std::thread::sleep(Duration::from_millis(20));
        samples[5].push(client.call(GET_ROOT, 200)?);
    }
    println!(
        "{:<26} {:>12} {:>12} {:>12}",
        "request", "median (us)", "min (us)", "max (us)"
    );
    for (name, mut s) in NAMES.iter().zip(samples) {
        s.sort_unstable();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "{name:<26} {:>12.1} {:>12.1} {:>12.1}",
            us(s[s.len() / 2]),
            us(s[0]),
            us(s[s.len() - 1])
        );
    }
    println!("{runs} processes");
    Ok(())
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    if args.serve {
        return serve(&args.socket);
    }
    if let Some(runs) = args.cold {
        let binary = args.xenia.clone().ok_or("--cold needs --xenia")?;
        return cold(&args, &binary, runs);
    }
    let _xenia = match &args.xenia {
        Some(binary) => Some(SpawnedXenia::start(binary, &args.socket)?),
        None => None,
    };
    let put = put_machine_request();
    let results = [
        sequential(&args, "GET / sequential", GET_ROOT, 200)?,
        sequential(&args, "PUT /machine-config sequential", &put, 204)?,
        concurrent(&args, "GET / concurrent", GET_ROOT, 200)?,
        concurrent(&args, "PUT /machine-config concurrent", &put, 204)?,
    ];
    if args.json {
        let rows: Vec<String> = results
            .iter()
            .map(|s| {
                format!(
                    "{{\"name\":\"{}\",\"requests\":{},\"median_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1},\"requests_per_second\":{:.0}}}",
                    s.name, s.count, s.median_us, s.p99_us, s.max_us, s.per_second
                )
            })
            .collect();
        println!(
            "{{\"socket\":\"{}\",\"clients\":{},\"results\":[{}]}}",
            args.socket
                .display()
                .to_string()
                .replace('\\', "\\\\")
                .replace('"', "\\\""),
            args.clients,
            rows.join(",")
        );
    } else {
        println!(
            "{:<34} {:>8} {:>12} {:>12} {:>12} {:>10}",
            "benchmark", "requests", "median (us)", "p99 (us)", "max (us)", "req/s"
        );
        for s in &results {
            println!(
                "{:<34} {:>8} {:>12.1} {:>12.1} {:>12.1} {:>10.0}",
                s.name, s.count, s.median_us, s.p99_us, s.max_us, s.per_second
            );
        }
        println!("concurrent runs use {} clients", args.clients);
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-api: {e}");
            ExitCode::FAILURE
        }
    }
}
