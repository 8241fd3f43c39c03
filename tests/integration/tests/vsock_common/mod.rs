//! Helpers shared by the `vsock*` tests: a probe VM with a vsock device, the host side of
//! Firecracker's protocol (`CONNECT <port>\n` / `OK <port>\n`, listeners at
//! `<uds_path>_<port>`), FNV-1a as the probe computes it, the metrics.

// Not every test file uses every helper; helpers fail the test with the console attached.
#![allow(dead_code, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};
use xenia_integration_tests::{
    boot_config, last_metrics, probe, probe_args, TempDir, Xenia, BOOT_TIMEOUT,
};

pub const RUN_TIMEOUT: Duration = Duration::from_secs(180);
pub const GUEST_CID: u64 = 3;

pub fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}
pub const FNV_INIT: u64 = 0xcbf2_9ce4_8422_2325;

/// A VM running the probe with a vsock device at `<dir>/v.sock`.
pub struct VsockVm {
    pub x: Xenia,
    pub dir: TempDir,
    pub uds: PathBuf,
    pub metrics: PathBuf,
}

impl VsockVm {
    /// Boots the probe running `cmds`; `before` runs on the directory before the start
    /// (e.g. to bind host listeners).
    pub fn boot(cmds: &str) -> VsockVm {
        let dir = TempDir::new();
        let uds = dir.path().join("v.sock");
        let mut config = boot_config(&probe().pvh, &probe_args(cmds), 1, 256);
        config["vsock"] = json!({"guest_cid": GUEST_CID, "uds_path": uds});
        let metrics = dir.path().join("metrics.json");
        let metrics_arg = metrics.to_string_lossy().into_owned();
        let mut x = Xenia::start(&config, &["--metrics-path", &metrics_arg]);
        x.wait_for_line("PROBE-BOOT-OK", BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        VsockVm {
            x,
            dir,
            uds,
            metrics,
        }
    }

    /// `<uds_path>_<port>`.
    pub fn port_path(uds: &Path, port: u32) -> PathBuf {
        let mut p = uds.as_os_str().to_owned();
        p.push(format!("_{port}"));
        PathBuf::from(p)
    }

    /// Waits for the probe's line starting with `prefix`.
    pub fn line(&mut self, prefix: &str) -> String {
        self.x
            .wait_for_line(prefix, RUN_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", self.x.stderr()))
    }

    /// Waits for `cmd`'s result, which must be `ok`.
    pub fn ok(&mut self, cmd: &str) -> String {
        let line = self.line(&format!("PROBE {cmd} "));
        let line = if line.contains(" ready ") {
            self.line(&format!("PROBE {cmd} "))
        } else {
            line
        };
        assert!(
            line.starts_with(&format!("PROBE {cmd} ok")),
            "{line}\nconsole:\n{}\nstderr:\n{}",
            self.x.lines.join("\n"),
            self.x.stderr()
        );
        line
    }

    /// Waits for the probe to finish and exit cleanly; returns the last metrics line.
    pub fn finish(mut self) -> Value {
        self.x
            .wait_for_line("PROBE-DONE", RUN_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        let status = self
            .x
            .wait_exit(RUN_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status.code(), Some(0), "stderr:\n{}", self.x.stderr());
        last_metrics(&self.metrics)
    }
}

/// Host side of a host-initiated connection: connects to `uds`, asks for guest `port`, and
/// reads `OK <host_port>`; returns the stream and the host port.
pub fn host_connect(uds: &Path, port: u32) -> (UnixStream, u32) {
    let mut s = UnixStream::connect(uds).unwrap_or_else(|e| panic!("{}: {e}", uds.display()));
    s.set_read_timeout(Some(RUN_TIMEOUT)).unwrap_or_default();
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    // Byte by byte: nothing after the line may be consumed.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match s.read(&mut b) {
            Ok(1) => line.push(b[0]),
            r => panic!(
                "no OK line (got {:?} so far): {r:?}",
                String::from_utf8_lossy(&line)
            ),
        }
        assert!(line.len() < 32, "{line:?}");
    }
    let text = String::from_utf8_lossy(&line);
    let host_port: u32 = text
        .strip_prefix("OK ")
        .and_then(|p| p.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("not an OK line: {text:?}"));
    (s, host_port)
}

/// Deterministic host data (xorshift64 bytes from `seed`).
pub fn host_data(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// Sends `data` on `s` (from a thread) while reading everything back until EOF after
/// shutting the write side; returns what came back.
pub fn echo_round_trip(s: UnixStream, data: Vec<u8>) -> Vec<u8> {
    let mut w = s.try_clone().unwrap_or_else(|e| panic!("{e}"));
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap_or_else(|e| panic!("write: {e}"));
        w.shutdown(std::net::Shutdown::Write).unwrap_or_default();
    });
    let mut back = Vec::new();
    let mut r = s;
    r.read_to_end(&mut back)
        .unwrap_or_else(|e| panic!("read: {e}"));
    writer.join().unwrap_or_else(|_| panic!("writer panicked"));
    back
}

/// What a host listener saw on one guest-initiated connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub bytes: u64,
    pub fnv: u64,
}

/// Listens at `<uds>_<port>` and serves `conns` connections one at a time: reads to EOF
/// (hashing), echoing everything back when `echo`, then closes.
pub fn host_listener(uds: &Path, port: u32, conns: usize, echo: bool) -> JoinHandle<Vec<Seen>> {
    let path = VsockVm::port_path(uds, port);
    let l = UnixListener::bind(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..conns {
            let (mut s, _) = l.accept().unwrap_or_else(|e| panic!("accept: {e}"));
            s.set_read_timeout(Some(RUN_TIMEOUT)).unwrap_or_default();
            let mut buf = vec![0u8; 256 << 10];
            let (mut bytes, mut h) = (0u64, FNV_INIT);
            loop {
                let n = s.read(&mut buf).unwrap_or_else(|e| panic!("read: {e}"));
                if n == 0 {
                    break;
                }
                bytes += n as u64;
                h = fnv(h, &buf[..n]);
                if echo {
                    s.write_all(&buf[..n])
                        .unwrap_or_else(|e| panic!("echo: {e}"));
                }
            }
            seen.push(Seen { bytes, fnv: h });
        }
        seen
    })
}

/// Reads the sink's `<bytes>\n` answer.
pub fn sink_reply(mut s: UnixStream) -> u64 {
    let mut text = String::new();
    BufReader::new(&mut s)
        .read_line(&mut text)
        .unwrap_or_else(|e| panic!("reply: {e}"));
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("bad sink reply {text:?}"))
}

/// The stream `vsock-connect` connection `n` sends (the probe's `base_block`): 32 KiB blocks
/// of little-endian xorshift64 words from `(n + 1) * 0x9e3779b97f4a7c15 | 1`, block `i`'s
/// first 8 bytes replaced by `i`, cut to `len`.
pub fn probe_stream(n: u64, len: usize) -> Vec<u8> {
    const BLOCK: usize = 32 << 10;
    let mut base = vec![0u8; BLOCK];
    let mut s = (n + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for w in base.chunks_exact_mut(8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        w.copy_from_slice(&s.to_le_bytes());
    }
    let mut out = Vec::with_capacity(len);
    let mut i = 0u64;
    while out.len() < len {
        base[..8].copy_from_slice(&i.to_le_bytes());
        let take = BLOCK.min(len - out.len());
        out.extend_from_slice(&base[..take]);
        i += 1;
    }
    out
}

/// `key=value` of a probe line, as a number (hex if the key says so).
pub fn num(line: &str, key: &str) -> u64 {
    let v = xenia_integration_tests::probe_lines::field(line, key)
        .unwrap_or_else(|| panic!("no `{key}` in {line}"));
    v.parse()
        .ok()
        .or_else(|| u64::from_str_radix(v, 16).ok())
        .unwrap_or_else(|| panic!("`{key}` is not a number in {line}"))
}

pub fn hex(line: &str, key: &str) -> u64 {
    let v = xenia_integration_tests::probe_lines::field(line, key)
        .unwrap_or_else(|| panic!("no `{key}` in {line}"));
    u64::from_str_radix(v, 16).unwrap_or_else(|e| panic!("{key}: {e} in {line}"))
}
