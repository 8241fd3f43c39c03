//! Helpers shared by the snapshot tests: booting the probe through the API, taking a
//! snapshot, reading `memtick` lines and recomputing what they must say.

#![allow(dead_code, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use xenia_integration_tests::api::ApiClient;
use xenia_integration_tests::{probe, probe_args, Xenia, BOOT_TIMEOUT};

/// Boots the probe (PVH) with `cmds`.
pub fn boot(api: &ApiClient, cmds: &str, mem_mib: u32, track_dirty_pages: bool) {
    boot_with(api, &probe_args(cmds), mem_mib, track_dirty_pages, &[], &[]);
}

/// Boots the probe with full boot arguments, `drives` and `nets` (config-file entries).
pub fn boot_with(
    api: &ApiClient,
    boot_args: &str,
    mem_mib: u32,
    track_dirty_pages: bool,
    drives: &[serde_json::Value],
    nets: &[serde_json::Value],
) {
    let body = serde_json::json!({"kernel_image_path": probe().pvh, "boot_args": boot_args});
    api.expect("PUT", "/boot-source", &body.to_string(), 204);
    for d in drives {
        let id = d["drive_id"].as_str().unwrap_or_default();
        api.expect("PUT", &format!("/drives/{id}"), &d.to_string(), 204);
    }
    for n in nets {
        let id = n["iface_id"].as_str().unwrap_or_default();
        api.expect(
            "PUT",
            &format!("/network-interfaces/{id}"),
            &n.to_string(),
            204,
        );
    }
    let machine = serde_json::json!({"vcpu_count": 1, "mem_size_mib": mem_mib,
                                     "track_dirty_pages": track_dirty_pages});
    api.expect("PUT", "/machine-config", &machine.to_string(), 204);
    api.start_instance(204);
}

/// A snapshot's two files, in the directory of the process that made them.
#[derive(Debug)]
pub struct SnapshotFiles {
    pub state: PathBuf,
    pub mem: PathBuf,
}

impl SnapshotFiles {
    /// Fresh names in a new directory, removed when this value is dropped (it outlives the
    /// processes that write and read the files).
    pub fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("xenia-snap-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("snapshot dir");
        Self {
            state: dir.join("vm.state"),
            mem: dir.join("vm.mem"),
        }
    }

    pub fn create_body(&self, kind: &str) -> String {
        serde_json::json!({"snapshot_path": self.state, "mem_file_path": self.mem,
                           "snapshot_type": kind})
        .to_string()
    }

    pub fn load_body(&self, resume: bool) -> String {
        serde_json::json!({"snapshot_path": self.state,
            "mem_backend": {"backend_type": "File", "backend_path": self.mem},
            "resume_vm": resume})
        .to_string()
    }
}

impl Drop for SnapshotFiles {
    fn drop(&mut self) {
        if let Some(dir) = self.state.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Pauses the VM, lets the console drain, and creates a snapshot of `kind`.
pub fn pause_and_create(x: &mut Xenia, api: &ApiClient, files: &SnapshotFiles, kind: &str) {
    api.expect("PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
    let _ = x.lines_within(Duration::from_millis(300));
    api.expect("PUT", "/snapshot/create", &files.create_body(kind), 204);
}

/// One `PROBE memtick n=` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    pub n: u64,
    pub sum: u64,
    pub bad: u64,
    pub pages: u64,
}

/// Parses a complete memtick line (None for other or cut lines).
pub fn parse_tick(line: &str) -> Option<Tick> {
    let rest = line.strip_prefix("PROBE memtick n=")?;
    let field = |key: &str| {
        rest.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    };
    let n = rest.split_whitespace().next()?.parse().ok()?;
    let sum = u64::from_str_radix(field("sum")?.strip_prefix("0x")?, 16).ok()?;
    let bad = field("bad")?.parse().ok()?;
    let pages = field("pages")?.parse().ok()?;
    Some(Tick { n, sum, bad, pages })
}

/// The last complete tick on the console so far.
pub fn last_tick(x: &Xenia) -> Option<Tick> {
    x.lines.iter().rev().find_map(|l| parse_tick(l))
}

/// Waits for the next complete tick line.
pub fn next_tick(x: &mut Xenia) -> Tick {
    let deadline = std::time::Instant::now() + BOOT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = x
            .wait_for_line("PROBE memtick n=", left)
            .unwrap_or_else(|e| panic!("{e}"));
        if let Some(t) = parse_tick(&line) {
            return t;
        }
    }
}

const A: u64 = 0x9e37_79b9_7f4a_7c15;
const B: u64 = 0xc2b2_ae3d_27d4_eb4f;
const C: u64 = 0x5eed_5eed_0000_0000;

/// CRC-64/XZ, the state file's checksum (for tests that edit a state file on purpose).
pub fn crc64(data: &[u8]) -> u64 {
    let mut crc = u64::MAX;
    for &b in data {
        crc ^= u64::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xc96c_5795_d787_0f42
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Replaces `from` by `to` (same length) in a state file's payload and fixes its checksum.
pub fn edit_state(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = bytes.to_vec();
    let at = out
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{:?} not in the state file", String::from_utf8_lossy(from)));
    out[at..at + to.len()].copy_from_slice(to);
    let sum = crc64(&out[32..]);
    out[24..32].copy_from_slice(&sum.to_le_bytes());
    out
}

/// What the probe's memtick region sums to after tick `n` (its README's definition).
pub fn expected_sum(n: u64, pages: u64) -> u64 {
    (0..pages).fold(0u64, |sum, i| {
        let back = (n % pages + pages - i) % pages;
        let word = match n.checked_sub(back) {
            Some(m) if m >= 1 => m.wrapping_mul(B) ^ C,
            _ => (i + 1).wrapping_mul(A),
        };
        sum.wrapping_add(word)
    })
}
