//! bench-net: virtio-net figures with the probe guest.
//!
//! Builds a private network namespace with one tap (10.50.0.1/24 on the host end), then per
//! run boots the probe under `xenia` inside it and measures one workload:
//! - `tx`: probe-to-host UDP (`net-flood`, 1400-byte payloads) into a host socket;
//! - `rx`: host-to-probe UDP (the host sends 1400-byte datagrams as fast as it can,
//!   `net-sink` counts them in the guest);
//! - `echo`: UDP echo round trip, stop-and-wait 1400-byte datagrams (`net-udp-echo`),
//!   timed on the host as the gap between consecutive datagrams, plus the probe's ICMP
//!   ping round trip.
//!
//! Host CPU is xenia's whole-process user+system time from `wait4` (boot included), per
//! GiB moved. Each workload runs `--runs` times; medians are printed and (`--json`) saved.

// A benchmark reports on stdout and stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const USAGE: &str = "usage: bench-net [--runs N] [--seconds S] [--xenia PATH] [--json FILE]
  --runs     runs per workload; the median is reported (default 5)
  --seconds  length of each throughput run in the guest (default 5)
  --xenia    the xenia binary (default target/release/xenia)
  --json     also write the results as JSON to FILE
Needs root (network namespaces, taps) and build/probe/probe.elf.";

const NS_PREFIX: &str = "xn-bench";
const HOST_IP: &str = "10.50.0.1";
const GUEST_IP: &str = "10.50.0.2";
const PAYLOAD: usize = 1400;
const ECHO_BYTES: usize = PAYLOAD * 200;

struct Args {
    runs: usize,
    seconds: u64,
    xenia: PathBuf,
    json: Option<PathBuf>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        runs: 5,
        seconds: 5,
        xenia: repo_root().join("target/release/xenia"),
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--runs" => a.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--seconds" => a.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--xenia" => a.xenia = value()?.into(),
            "--json" => a.json = Some(value()?.into()),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if a.runs == 0 || a.seconds == 0 {
        return Err("--runs and --seconds must be at least 1".into());
    }
    Ok(a)
}

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The namespace and its tap; deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Result<Self, String> {
        let name = format!("{NS_PREFIX}-{}", std::process::id());
        sh(&["netns", "add", &name])?;
        let ns = Netns(name);
        let n = ns.0.as_str();
        sh(&["-n", n, "link", "set", "lo", "up"])?;
        sh(&["-n", n, "tuntap", "add", "dev", "xbench0", "mode", "tap"])?;
        sh(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{HOST_IP}/24"),
            "dev",
            "xbench0",
        ])?;
        sh(&["-n", n, "link", "set", "xbench0", "up"])?;
        Ok(ns)
    }

    /// Runs `f` on a thread inside the namespace.
    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T, String>> {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            // SAFETY: setns(2) on an open namespace fd; affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            Ok(f())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["netns", "del", &self.0]);
    }
}

struct VmRun {
    lines: Vec<String>,
    cpu_s: f64,
}

/// Boots the probe with `cmds` in the namespace, waits for it to exit; console lines and
/// the process's CPU time.
fn run_vm(a: &Args, ns: &Netns, cmds: &str, dir: &Path) -> Result<VmRun, String> {
    let config = json!({
        "boot-source": {
            "kernel_image_path": repo_root().join("build/probe/probe.elf"),
            "boot_args": format!("console=ttyS0 probe.ip={GUEST_IP}/24 probe.cmds={cmds}"),
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "xbench0",
                                "guest_mac": "06:00:0a:32:00:02"}],
    });
    let path = dir.join("bench-net.json");
    std::fs::write(&path, config.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(&a.xenia)
        .args(["--no-api", "--config-file"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", a.xenia.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; all-zero is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4(2) on our own child with valid out-pointers; reaps it.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if rc != pid {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(VmRun {
        lines,
        cpu_s: secs(usage.ru_utime) + secs(usage.ru_stime),
    })
}

fn result<'a>(run: &'a VmRun, cmd: &str) -> Result<&'a str, String> {
    let ok = format!("PROBE {cmd} ok");
    run.lines
        .iter()
        .find(|l| l.starts_with(&ok))
        .map(String::as_str)
        .ok_or_else(|| format!("no `{ok}` line; console:\n{}", run.lines.join("\n")))
}

fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

fn need(line: &str, key: &str) -> Result<f64, String> {
    field(line, key).ok_or_else(|| format!("no `{key}` in {line}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// Probe to host: the guest's rate, the host socket's count, CPU per GiB.
fn tx_run(a: &Args, ns: &Netns, dir: &Path) -> Result<Value, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicU64::new(0));
    let (flag, count) = (stop.clone(), got.clone());
    let sink = ns.spawn(move || -> Result<(), String> {
        let s = UdpSocket::bind((HOST_IP, 9000)).map_err(|e| format!("bind: {e}"))?;
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2048];
        while !flag.load(Ordering::Relaxed) {
            if s.recv(&mut buf).is_ok() {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    });
    std::thread::sleep(Duration::from_millis(200));
    let run = run_vm(
        a,
        ns,
        &format!("net-flood:{HOST_IP}:9000:{}:{PAYLOAD}", a.seconds),
        dir,
    );
    stop.store(true, Ordering::Relaxed);
    sink.join().map_err(|_| "sink thread panicked")???;
    let run = run?;
    let line = result(&run, "net-flood")?;
    let bytes = need(line, "bytes")?;
    Ok(json!({
        "frames_per_s": need(line, "frames_per_s")?,
        "bytes_per_s": need(line, "bytes_per_s")?,
        "host_received_frames": got.load(Ordering::Relaxed),
        "guest_frames": need(line, "frames")?,
        "cpu_s_per_gib": run.cpu_s / (bytes / GIB),
    }))
}

/// Host to probe: the host sends as fast as it can; the guest counts.
fn rx_run(a: &Args, ns: &Netns, dir: &Path) -> Result<Value, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let sender = ns.spawn(move || -> Result<u64, String> {
        let s = UdpSocket::bind((HOST_IP, 0)).map_err(|e| format!("bind: {e}"))?;
        let payload = [0x5au8; PAYLOAD];
        let mut sent = 0u64;
        while !flag.load(Ordering::Relaxed) {
            // The tap drops what the guest cannot take: errors (ENOBUFS) are expected.
            if s.send_to(&payload, (GUEST_IP, 9001)).is_ok() {
                sent += 1;
            }
        }
        Ok(sent)
    });
    let run = run_vm(a, ns, &format!("net-sink:9001:{}", a.seconds), dir);
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().map_err(|_| "sender thread panicked")???;
    let run = run?;
    let line = result(&run, "net-sink")?;
    let bytes = need(line, "bytes")?;
    Ok(json!({
        "frames_per_s": need(line, "frames_per_s")?,
        "bytes_per_s": need(line, "bytes_per_s")?,
        "host_sent_frames": sent,
        "guest_frames": need(line, "frames")?,
        "cpu_s_per_gib": run.cpu_s / (bytes / GIB),
    }))
}

/// UDP echo round trip (host-timed gaps between stop-and-wait datagrams) and ICMP ping.
fn echo_run(a: &Args, ns: &Netns, dir: &Path) -> Result<Value, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let server = ns.spawn(move || -> Result<Vec<f64>, String> {
        let s = UdpSocket::bind((HOST_IP, 7777)).map_err(|e| format!("bind: {e}"))?;
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2048];
        let mut gaps = Vec::new();
        let mut last: Option<Instant> = None;
        while !flag.load(Ordering::Relaxed) {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                let now = Instant::now();
                let _ = s.send_to(&buf[..n], from);
                if let Some(t) = last {
                    gaps.push(now.duration_since(t).as_secs_f64() * 1e6);
                }
                last = Some(now);
            }
        }
        Ok(gaps)
    });
    std::thread::sleep(Duration::from_millis(200));
    let run = run_vm(
        a,
        ns,
        &format!("net-udp-echo:{HOST_IP}:7777:{ECHO_BYTES},net-ping:{HOST_IP}:20"),
        dir,
    );
    stop.store(true, Ordering::Relaxed);
    let gaps = server.join().map_err(|_| "echo thread panicked")???;
    let run = run?;
    result(&run, "net-udp-echo")?;
    let ping = result(&run, "net-ping")?;
    Ok(json!({
        "udp_echo_rtt_us": median(gaps),
        "icmp_ping_rtt_us": need(ping, "avg_us")?,
    }))
}

type Workload = fn(&Args, &Netns, &Path) -> Result<Value, String>;

fn main() -> std::process::ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let run = || -> Result<Value, String> {
        if !a.xenia.exists() {
            return Err(format!(
                "{} missing: cargo build --release -p vmm --bin xenia",
                a.xenia.display()
            ));
        }
        let dir = std::env::temp_dir().join(format!("bench-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let ns = Netns::new()?;
        let workloads: [(&str, Workload, &[&str]); 3] = [
            (
                "probe-to-host",
                tx_run,
                &["frames_per_s", "bytes_per_s", "cpu_s_per_gib"],
            ),
            (
                "host-to-probe",
                rx_run,
                &["frames_per_s", "bytes_per_s", "cpu_s_per_gib"],
            ),
            (
                "udp-echo",
                echo_run,
                &["udp_echo_rtt_us", "icmp_ping_rtt_us"],
            ),
        ];
        let mut out = serde_json::Map::new();
        for (name, f, keys) in workloads {
            let mut runs = Vec::new();
            for i in 0..a.runs {
                let r = f(&a, &ns, &dir)?;
                eprintln!("{name} run {}: {r}", i + 1);
                runs.push(r);
            }
            let mut med = serde_json::Map::new();
            for k in keys {
                let v = median(runs.iter().filter_map(|r| r[*k].as_f64()).collect());
                med.insert((*k).to_owned(), json!(v));
            }
            println!("{name:14} {}", Value::Object(med.clone()));
            out.insert(name.to_owned(), json!({"median": med, "runs": runs}));
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Value::Object(out))
    };
    match run() {
        Ok(v) => {
            if let Some(p) = &a.json {
                if let Err(e) = std::fs::write(p, format!("{v:#}\n")) {
                    eprintln!("{}: {e}", p.display());
                    return std::process::ExitCode::FAILURE;
                }
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-net: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
