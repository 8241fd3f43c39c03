//! `bench-blk`: virtio-blk figures measured with the probe guest.
//!
//! Each run boots xenia with one drive (a 1 GiB image filled with data, so reads hit the
//! page cache rather than holes) and the probe command
//! `blk-bench:<mode>:<req_bytes>:<inflight>:<total_mib>,idle`. The probe times the transfer
//! with its TSC and prints MiB/s and IOPS; while it idles afterwards the tool reads the CPU
//! time xenia's threads used (`/proc/<pid>/task/*/schedstat`), then kills it. Each workload runs
//! `--runs` times per engine; the median is reported, as text and (`--json`) as JSON.
//!
//! Under PVM the guest's ring-0 driver is emulated (~1 µs an instruction), so these figures
//! are bound by the guest, not by the device: the `io` thread's CPU time per GiB is the
//! device's own cost.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod images;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use images::Format;
use serde_json::{json, Value};

const USAGE: &str = "\
usage: bench-blk [--xenia PATH] [--probe PATH] [--image PATH] [--runs N] [--engines Sync,Async]
                 [--formats raw,qcow2-fresh,qcow2-full] [--json PATH] [--quick] [--only SUBSTRING]
  --xenia    xenia binary (default: <repo>/target/release/xenia; build it with
             `cargo build --release -p vmm --bin xenia`)
  --probe    probe guest ELF (default: <repo>/build/probe/probe.elf)
  --image    1 GiB image to create and reuse (default: $TMPDIR/xenia-bench-blk.img)
  --runs     runs per workload and engine; the median is reported (default 5)
  --quick    a quarter of the data per run (for a smoke test)
  --only     run only the workloads whose name contains SUBSTRING (e.g. `4K-qd1`)
  --formats  raw: the image; qcow2-fresh: a new overlay over it per run (first writes to
             clusters); qcow2-full: a fully allocated qcow2 copy (default: all three;
             qcow2 runs on the Sync engine only; needs qemu-img)
";

const IMAGE_BYTES: u64 = 1 << 30;
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
struct Workload {
    name: &'static str,
    mode: &'static str,
    req_bytes: u64,
    inflight: u32,
    total_mib: u64,
}

const WORKLOADS: [Workload; 6] = [
    Workload {
        name: "seq-read-1M-qd8",
        mode: "seqread",
        req_bytes: 1 << 20,
        inflight: 8,
        total_mib: 512,
    },
    Workload {
        name: "seq-write-1M-qd8",
        mode: "seqwrite",
        req_bytes: 1 << 20,
        inflight: 8,
        total_mib: 512,
    },
    Workload {
        name: "rand-read-4K-qd1",
        mode: "randread",
        req_bytes: 4096,
        inflight: 1,
        total_mib: 16,
    },
    Workload {
        name: "rand-read-4K-qd32",
        mode: "randread",
        req_bytes: 4096,
        inflight: 32,
        total_mib: 32,
    },
    Workload {
        name: "rand-write-4K-qd1",
        mode: "randwrite",
        req_bytes: 4096,
        inflight: 1,
        total_mib: 16,
    },
    Workload {
        name: "rand-write-4K-qd32",
        mode: "randwrite",
        req_bytes: 4096,
        inflight: 32,
        total_mib: 32,
    },
];

struct Args {
    xenia: PathBuf,
    probe: PathBuf,
    image: PathBuf,
    runs: usize,
    engines: Vec<String>,
    formats: Vec<Format>,
    json: Option<PathBuf>,
    quick: bool,
    only: Option<String>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn parse_args() -> Result<Args, String> {
    let root = repo_root();
    let mut a = Args {
        xenia: root.join("target/release/xenia"),
        probe: root.join("build/probe/probe.elf"),
        image: std::env::temp_dir().join("xenia-bench-blk.img"),
        runs: 5,
        engines: vec!["Sync".into(), "Async".into()],
        formats: vec![Format::Raw, Format::Qcow2Fresh, Format::Qcow2Full],
        json: None,
        quick: false,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--xenia" => a.xenia = value()?.into(),
            "--probe" => a.probe = value()?.into(),
            "--image" => a.image = value()?.into(),
            "--runs" => {
                a.runs = value()?
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("--runs: a positive integer")?
            }
            "--engines" => a.engines = value()?.split(',').map(str::to_owned).collect(),
            "--formats" => {
                a.formats = value()?
                    .split(',')
                    .map(Format::parse)
                    .collect::<Result<_, _>>()?
            }
            "--json" => a.json = Some(value()?.into()),
            "--quick" => a.quick = true,
            "--only" => a.only = Some(value()?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    for (what, p) in [("--xenia", &a.xenia), ("--probe", &a.probe)] {
        if !p.is_file() {
            return Err(format!("{what}: `{}` does not exist", p.display()));
        }
    }
    Ok(a)
}

/// Creates the image with non-zero data once (a sparse file would read as holes).
fn ensure_image(path: &Path) -> Result<(), String> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == IMAGE_BYTES) {
        return Ok(());
    }
    eprintln!("creating {} (1 GiB)...", path.display());
    let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..IMAGE_BYTES >> 20 {
        for w in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&(x ^ i).to_le_bytes());
        }
        f.write_all(&chunk)
            .map_err(|e| format!("write image: {e}"))?;
    }
    f.sync_all().map_err(|e| format!("sync image: {e}"))
}

/// CPU seconds per thread name of process `pid`, from the scheduler's nanosecond runtime
/// (`/proc/<pid>/task/<tid>/schedstat`; `stat`'s clock ticks are too coarse for short runs).
fn thread_cpu(pid: u32) -> Vec<(String, f64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let read = |name: &str| std::fs::read_to_string(entry.path().join(name)).ok();
        let (Some(comm), Some(sched)) = (read("comm"), read("schedstat")) else {
            continue;
        };
        let ns: f64 = sched
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        out.push((comm.trim().to_owned(), ns / 1e9));
    }
    out
}

struct Run {
    mib_per_s: f64,
    iops: f64,
    cpu_total_s: f64,
    cpu_io_s: f64,
    gib: f64,
}

fn lines_of(child: &mut Child) -> Result<Receiver<String>, String> {
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

fn run_once(
    a: &Args,
    format: Format,
    engine: &str,
    w: &Workload,
    dir: &Path,
) -> Result<Run, String> {
    let image = images::prepare(format, &a.image)?;
    let total_mib = if a.quick {
        (w.total_mib / 4).max(1)
    } else {
        w.total_mib
    };
    let cmd = format!(
        "blk-bench:{}:{}:{}:{},idle",
        w.mode, w.req_bytes, w.inflight, total_mib
    );
    let mut drive = json!({"drive_id": "bench", "path_on_host": image,
                           "is_root_device": false, "io_engine": engine});
    if let (Some(d), Value::Object(extra)) = (drive.as_object_mut(), format.drive_fields()) {
        d.extend(extra);
    }
    let config = json!({
        "boot-source": {"kernel_image_path": a.probe,
                        "boot_args": format!("console=ttyS0 probe.cmds={cmd}")},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
        "drives": [drive]
    });
    let path = dir.join("bench-blk.json");
    std::fs::write(&path, config.to_string()).map_err(|e| format!("write config: {e}"))?;
    let mut child = Command::new(&a.xenia)
        .args(["--no-api", "--config-file"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", a.xenia.display()))?;
    let rx = lines_of(&mut child)?;
    let result = loop {
        match rx.recv_timeout(RUN_TIMEOUT) {
            Ok(line) if line.starts_with("PROBE blk-bench ") => break Ok(line),
            Ok(_) => continue,
            Err(e) => break Err(format!("no blk-bench result: {e}")),
        }
    };
    let threads = thread_cpu(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let line = result?;
    if !line.starts_with("PROBE blk-bench ok") {
        return Err(line);
    }
    let bytes = field(&line, "bytes").ok_or("no bytes=")?;
    Ok(Run {
        mib_per_s: field(&line, "mib_per_s").ok_or("no mib_per_s=")?,
        iops: field(&line, "iops").ok_or("no iops=")?,
        cpu_total_s: threads.iter().map(|(_, s)| s).sum(),
        cpu_io_s: threads
            .iter()
            .filter(|(n, _)| n == "io")
            .map(|(_, s)| s)
            .sum(),
        gib: bytes / f64::from(1u32 << 30),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs one workload `--runs` times; prints and returns the medians.
fn measure(a: &Args, format: Format, engine: &str, w: &Workload, dir: &Path) -> Option<Value> {
    let mut runs = Vec::new();
    for _ in 0..a.runs {
        match run_once(a, format, engine, w, dir) {
            Ok(r) => runs.push(r),
            Err(e) => eprintln!("bench-blk: {} {engine} {}: {e}", format.name(), w.name),
        }
    }
    if runs.is_empty() {
        return None;
    }
    let mibs = median(runs.iter().map(|r| r.mib_per_s).collect());
    let iops = median(runs.iter().map(|r| r.iops).collect());
    let cpu = median(runs.iter().map(|r| r.cpu_total_s / r.gib).collect());
    let io = median(runs.iter().map(|r| r.cpu_io_s / r.gib).collect());
    println!(
        "{:<12} {engine:<8} {:<18} {mibs:>10.2} {iops:>9.0} {cpu:>14.3} {io:>14.3}",
        format.name(),
        w.name
    );
    Some(json!({
        "format": format.name(), "engine": engine, "workload": w.name, "mode": w.mode,
        "req_bytes": w.req_bytes, "inflight": w.inflight, "runs": runs.len(),
        "median_mib_per_s": mibs, "median_iops": iops,
        "median_cpu_s_per_gib": cpu, "median_io_thread_cpu_s_per_gib": io,
        "all_mib_per_s": runs.iter().map(|r| r.mib_per_s).collect::<Vec<_>>(),
    }))
}

/// The cost of a guest write that allocates a cluster (copy-on-write from the base, L2 and
/// refcount updates): 4 KiB random writes at qd1 on a fresh overlay (almost every one hits
/// a cluster not written before) against the same on a fully allocated image.
fn first_write_cost(results: &[Value]) -> Option<Value> {
    let find = |format: &str| {
        results.iter().find(|r| {
            r["format"] == format && r["engine"] == "Sync" && r["workload"] == "rand-write-4K-qd1"
        })
    };
    let (fresh, full) = (find("qcow2-fresh")?, find("qcow2-full")?);
    let per_req_us = |r: &Value| 1e6 / r["median_iops"].as_f64().unwrap_or(f64::INFINITY);
    let io_us = |r: &Value| {
        r["median_io_thread_cpu_s_per_gib"].as_f64().unwrap_or(0.0) * 4096.0 / f64::from(1u32 << 30)
            * 1e6
    };
    Some(json!({
        "fresh_us_per_request": per_req_us(fresh),
        "allocated_us_per_request": per_req_us(full),
        "extra_us_per_request": per_req_us(fresh) - per_req_us(full),
        "extra_io_thread_us_per_request": io_us(fresh) - io_us(full),
    }))
}

fn main() -> std::process::ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("bench-blk: {e}");
            }
            eprint!("{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Err(e) = ensure_image(&a.image) {
        eprintln!("bench-blk: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let dir = std::env::temp_dir().join(format!("bench-blk-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("bench-blk: {}: {e}", dir.display());
        return std::process::ExitCode::FAILURE;
    }
    let mut results = Vec::new();
    println!(
        "{:<12} {:<8} {:<18} {:>10} {:>9} {:>14} {:>14}",
        "format", "engine", "workload", "MiB/s", "IOPS", "cpu s/GiB", "io-thr s/GiB"
    );
    for &format in &a.formats {
        for engine in a.engines.iter().filter(|e| format.supports(e)) {
            for w in &WORKLOADS {
                if a.only
                    .as_ref()
                    .is_some_and(|o| !w.name.contains(o.as_str()))
                {
                    continue;
                }
                if let Some(r) = measure(&a, format, engine, w, &dir) {
                    results.push(r);
                }
            }
        }
    }
    images::cleanup(&a.image);
    let first_write = first_write_cost(&results);
    if let Some(fw) = &first_write {
        println!(
            "first write to a cluster (4 KiB, qd1, Sync): +{:.1} us per request over an \
             allocated cluster (+{:.1} us on the io thread)",
            fw["extra_us_per_request"].as_f64().unwrap_or(0.0),
            fw["extra_io_thread_us_per_request"].as_f64().unwrap_or(0.0)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let doc: Value = json!({
        "note": "guest-bound under PVM: the probe's ring-0 driver is emulated",
        "image_bytes": IMAGE_BYTES, "results": results, "first_write": first_write
    });
    if let Some(p) = &a.json {
        if let Err(e) = std::fs::write(p, format!("{doc:#}\n")) {
            eprintln!("bench-blk: {}: {e}", p.display());
            return std::process::ExitCode::FAILURE;
        }
    }
    std::process::ExitCode::SUCCESS
}
