//! bench-vsock: virtio-vsock figures with the probe guest over Firecracker's hybrid protocol.
//!
//! Per run, one VM (1 vCPU, 256 MiB) runs three probe commands in turn:
//! - `rx`: host -> probe. The host connects to `uds_path`, `CONNECT 53`, writes `--mib` MiB;
//!   the probe (`vsock-sink`) counts them and answers `<bytes>` after the host's
//!   shutdown. Timed from the first byte to the answer.
//! - `tx`: probe -> host. The probe (`vsock-connect`) connects to `<uds_path>_7001` and sends
//!   `--mib` MiB; the host reads to EOF. Timed from accept to EOF.
//! - `rtt`: the host sends 1 byte and reads it back from `vsock-echo`, `--pings` times on one
//!   connection; the median and p99 round trip.
//!
//! Medians over `--runs` are printed and (`--json`) saved.

// A benchmark reports on stdout and stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::json;

const USAGE: &str =
    "usage: bench-vsock [--runs N] [--mib M] [--pings P] [--xenia PATH] [--json FILE]
  --runs   VMs booted; medians are reported (default 5)
  --mib    MiB moved each way per run (default 64)
  --pings  1-byte round trips per run (default 2000)
  --xenia  the xenia binary (default target/release/xenia)
  --json   also write the results as JSON to FILE
Needs /dev/kvm and build/probe/probe.elf (resources/guest-kernels/probe/build.sh).";

struct Args {
    runs: usize,
    mib: u64,
    pings: usize,
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
        mib: 64,
        pings: 2000,
        xenia: repo_root().join("target/release/xenia"),
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--runs" => a.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--mib" => a.mib = value()?.parse().map_err(|e| format!("--mib: {e}"))?,
            "--pings" => a.pings = value()?.parse().map_err(|e| format!("--pings: {e}"))?,
            "--xenia" => a.xenia = value()?.into(),
            "--json" => a.json = Some(value()?.into()),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if a.runs == 0 || a.mib == 0 || a.pings == 0 {
        return Err("--runs, --mib and --pings must be at least 1".into());
    }
    Ok(a)
}

/// One booted VM and its console lines.
struct Vm {
    child: Child,
    lines: Receiver<String>,
    dir: PathBuf,
    uds: PathBuf,
}

impl Vm {
    fn boot(a: &Args, n: usize) -> Result<Vm, String> {
        let dir = std::env::temp_dir().join(format!("bench-vsock-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let uds = dir.join("v.sock");
        let bytes = a.mib << 20;
        let cmds = format!("vsock-sink:53:1:600,vsock-connect:7001:{bytes}:1,vsock-echo:52:1:600");
        let config = json!({
            "boot-source": {"kernel_image_path": repo_root().join("build/probe/probe.elf"),
                            "boot_args": format!("console=ttyS0 probe.cmds={cmds}")},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
            "vsock": {"guest_cid": 3, "uds_path": uds},
        });
        let cfg = dir.join("config.json");
        std::fs::write(&cfg, config.to_string()).map_err(|e| e.to_string())?;
        let mut child = Command::new(&a.xenia)
            .arg("--config-file")
            .arg(&cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", a.xenia.display()))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Vm {
            child,
            lines,
            dir,
            uds,
        })
    }

    fn wait_line(&self, prefix: &str) -> Result<String, String> {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(600))
                .map_err(|_| format!("no `{prefix}` line"))?;
            if line.starts_with(prefix) {
                return Ok(line);
            }
            if line.contains(" FAIL ") {
                return Err(line);
            }
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn host_connect(uds: &Path, port: u32) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(uds).map_err(|e| e.to_string())?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    let mut line = Vec::new();
    while line.last() != Some(&b'\n') {
        if s.read(&mut b).map_err(|e| e.to_string())? != 1 {
            return Err("no OK line".into());
        }
        line.push(b[0]);
    }
    if !line.starts_with(b"OK ") {
        return Err(format!("{:?}", String::from_utf8_lossy(&line)));
    }
    Ok(s)
}

struct Run {
    rx_mib_s: f64,
    tx_mib_s: f64,
    rtt_median_us: f64,
    rtt_p99_us: f64,
}

fn one_run(a: &Args, n: usize) -> Result<Run, String> {
    let vm = Vm::boot(a, n)?;
    let mut port = vm.uds.as_os_str().to_owned();
    port.push("_7001");
    let listener = UnixListener::bind(PathBuf::from(port)).map_err(|e| e.to_string())?;
    let bytes = (a.mib << 20) as usize;

    // rx: host -> probe.
    vm.wait_line("PROBE vsock-sink ready")?;
    let s = host_connect(&vm.uds, 53)?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let chunk = vec![0x5au8; 1 << 20];
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            if w.write_all(&chunk[..n]).is_err() {
                return;
            }
            left -= n;
        }
        let _ = w.shutdown(std::net::Shutdown::Write);
    });
    let mut reply = String::new();
    BufReader::new(s)
        .read_line(&mut reply)
        .map_err(|e| e.to_string())?;
    let rx_secs = t0.elapsed().as_secs_f64();
    let _ = writer.join();
    if reply.trim() != bytes.to_string() {
        return Err(format!("sink answered {reply:?}"));
    }

    // tx: probe -> host.
    let (mut s, _) = listener.accept().map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0usize;
    loop {
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let tx_secs = t0.elapsed().as_secs_f64();
    drop(s);
    if got != bytes {
        return Err(format!("probe sent {got} bytes, expected {bytes}"));
    }
    vm.wait_line("PROBE vsock-connect ok")?;

    // rtt: 1-byte echo.
    vm.wait_line("PROBE vsock-echo ready")?;
    let mut s = host_connect(&vm.uds, 52)?;
    let mut rtts = Vec::with_capacity(a.pings);
    let mut b = [0u8; 1];
    for i in 0..a.pings {
        let t = Instant::now();
        s.write_all(&[i as u8]).map_err(|e| e.to_string())?;
        s.read_exact(&mut b).map_err(|e| e.to_string())?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let _ = s.read_to_end(&mut Vec::new());
    rtts.sort_by(f64::total_cmp);
    let mib = a.mib as f64;
    Ok(Run {
        rx_mib_s: mib / rx_secs,
        tx_mib_s: mib / tx_secs,
        rtt_median_us: rtts[rtts.len() / 2],
        rtt_p99_us: rtts[(rtts.len() * 99 / 100).min(rtts.len() - 1)],
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut runs = Vec::new();
    for n in 0..a.runs {
        match one_run(&a, n) {
            Ok(r) => {
                println!(
                    "run {n}: host->probe {:.1} MiB/s, probe->host {:.1} MiB/s, rtt median {:.0} us p99 {:.0} us",
                    r.rx_mib_s, r.tx_mib_s, r.rtt_median_us, r.rtt_p99_us
                );
                runs.push(r);
            }
            Err(e) => {
                eprintln!("run {n}: {e}");
                std::process::exit(1);
            }
        }
    }
    let result = json!({
        "runs": a.runs,
        "mib": a.mib,
        "pings": a.pings,
        "host_to_probe_mib_s": median(runs.iter().map(|r| r.rx_mib_s).collect()),
        "probe_to_host_mib_s": median(runs.iter().map(|r| r.tx_mib_s).collect()),
        "rtt_median_us": median(runs.iter().map(|r| r.rtt_median_us).collect()),
        "rtt_p99_us": median(runs.iter().map(|r| r.rtt_p99_us).collect()),
    });
    println!("{result}");
    if let Some(path) = &a.json {
        if let Err(e) = std::fs::write(path, format!("{result}\n")) {
            eprintln!("{}: {e}", path.display());
            std::process::exit(1);
        }
    }
}
