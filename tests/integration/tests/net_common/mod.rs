//! Shared by the `net*` tests: network namespaces with taps and bridges (removed on drop),
//! xenia started inside a namespace, host-side helpers (a UDP echo server, a packet
//! capture) running on threads that joined the namespace, and probe/metrics parsing.
//!
//! Every test builds its own namespace, so tests run in parallel and leave nothing behind.

// Not every test file uses every helper; cleanup failures are reported on stderr.
#![allow(dead_code, clippy::print_stderr)]

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};
use xenia_integration_tests::api::ApiClient;
use xenia_integration_tests::{probe, xenia_binary, TempDir, Xenia, BOOT_TIMEOUT};

/// Generous limit for a probe's whole command list.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(240);
/// The source MAC `net-spoof` forges.
pub const FORGED_MAC: [u8; 6] = [0x02, 0xde, 0xad, 0xbe, 0xef, 0x01];

/// A network namespace, deleted (with every interface in it) on drop.
#[derive(Debug)]
pub struct NetNs {
    pub name: String,
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// A fresh namespace with `lo` up; `tag` makes its name readable in `ip netns`.
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("xn-{tag}-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> <args>`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// A tap named `name`, up, with `cidr` (e.g. `10.0.0.1/24`) as its host address.
    pub fn tap(&self, name: &str, cidr: Option<&str>) {
        self.ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
        if let Some(cidr) = cidr {
            self.ip(&["addr", "add", cidr, "dev", name]);
        }
        self.ip(&["link", "set", name, "up"]);
    }

    /// A bridge with `cidr` as the host's address on it, and `taps` enslaved.
    pub fn bridge(&self, name: &str, cidr: &str, taps: &[&str]) {
        self.ip(&["link", "add", name, "type", "bridge"]);
        self.ip(&["addr", "add", cidr, "dev", name]);
        self.ip(&["link", "set", name, "up"]);
        for tap in taps {
            self.ip(&["link", "set", tap, "master", name]);
        }
    }

    /// Starts xenia inside the namespace with `config` as its config file.
    pub fn xenia(&self, config: &Value, extra_args: &[&str]) -> Xenia {
        let dir = TempDir::new();
        let path = dir.write("config.json", config.to_string());
        let mut args = self.exec_prefix();
        args.extend(["--no-api".into(), "--config-file".into()]);
        args.push(path.to_string_lossy().into_owned());
        args.extend(extra_args.iter().map(|s| s.to_string()));
        Xenia::spawn_program(Path::new("ip"), &args, dir)
    }

    /// Starts xenia inside the namespace serving its API; returns once the socket answers.
    pub fn xenia_api(&self, extra_args: &[&str]) -> (Xenia, ApiClient) {
        let dir = TempDir::new();
        let socket = dir.path().join("api.sock");
        let mut args = self.exec_prefix();
        args.extend(["--api-sock".into(), socket.to_string_lossy().into_owned()]);
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let x = Xenia::spawn_program(Path::new("ip"), &args, dir);
        let api = ApiClient::new(socket);
        if let Err(e) = api.wait_ready(BOOT_TIMEOUT) {
            panic!("{e}; stderr:\n{}", x.stderr());
        }
        (x, api)
    }

    /// `ip netns exec` replaces itself with xenia, so the child is xenia itself.
    fn exec_prefix(&self) -> Vec<String> {
        vec![
            "netns".into(),
            "exec".into(),
            self.name.clone(),
            xenia_binary().to_string_lossy().into_owned(),
        ]
    }

    /// Runs `f` on a new thread that has joined this namespace (sockets it creates live
    /// there).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = PathBuf::from("/run/netns").join(&self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            // SAFETY: setns(2) with an open namespace fd; it changes only this thread's
            // network namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
            f()
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let ok = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("could not delete network namespace {}", self.name);
        }
    }
}

/// FNV-1a 64 of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The first `len` bytes of the `net-udp-echo` stream (byte k = k mod 251).
pub fn udp_pattern(len: usize) -> Vec<u8> {
    (0..len).map(|k| (k % 251) as u8).collect()
}

/// What a host-side UDP echo server saw.
#[derive(Debug, Default, Clone)]
pub struct EchoReport {
    /// The stream of distinct datagrams, in arrival order (a retransmission of the previous
    /// datagram is echoed but not appended).
    pub stream: Vec<u8>,
    pub datagrams: u64,
}

/// A UDP echo server on a thread inside a namespace.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<EchoReport>,
}

impl UdpEcho {
    /// Binds `addr` (e.g. `10.0.0.1:7777`) inside `ns`; returns once bound.
    pub fn start(ns: &NetNs, addr: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (addr, flag) = (addr.to_owned(), stop.clone());
        let thread = ns.spawn(move || {
            let sock = UdpSocket::bind(&addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            let _ = ready_tx.send(());
            let mut report = EchoReport::default();
            let mut last: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) {
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let _ = sock.send_to(&buf[..n], from);
                        report.datagrams += 1;
                        if buf[..n] != last[..] {
                            report.stream.extend_from_slice(&buf[..n]);
                            last = buf[..n].to_vec();
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => panic!("echo server: {e}"),
                }
            }
            report
        });
        ready
            .recv_timeout(Duration::from_secs(10))
            .expect("echo server did not start");
        Self { stop, thread }
    }

    pub fn stop(self) -> EchoReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("echo server thread")
    }
}

/// A packet socket on one interface of a namespace, recording the source MAC of every
/// frame (both directions).
///
/// A frame xenia writes to a tap is queued on the packet socket before the write returns
/// (tun delivers it to packet taps in the writer's context), hence before xenia completes
/// the guest's tx request. So once the test has seen the guest's result line, everything
/// the guest sent is already queued: [`Capture::stop`] drains the queue and returns, with
/// no waiting for frames "still in flight".
pub struct Capture {
    stop: OwnedFd,
    thread: JoinHandle<Vec<[u8; 6]>>,
}

/// Appends the source MAC of every frame queued on `fd` (non-blocking) to `sources`.
fn drain_sources(fd: &OwnedFd, sources: &mut Vec<[u8; 6]>) {
    let mut buf = [0u8; 2048];
    loop {
        // SAFETY: recv(2) into a buffer we own, with its length.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                ErrorKind::WouldBlock => return,
                ErrorKind::Interrupted => continue,
                _ => panic!("capture recv: {e}"),
            }
        }
        if n >= 14 {
            let mut src = [0u8; 6];
            src.copy_from_slice(&buf[6..12]);
            sources.push(src);
        }
    }
}

impl Capture {
    pub fn start(ns: &NetNs, ifname: &str) -> Self {
        // SAFETY: eventfd(2) with flags only; the fd is owned right below.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(raw >= 0, "eventfd: {}", std::io::Error::last_os_error());
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let stop = unsafe { OwnedFd::from_raw_fd(raw) };
        let stop_seen = stop.try_clone().expect("dup the stop eventfd");
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let ifname = ifname.to_owned();
        let thread = ns.spawn(move || {
            let fd = packet_socket(&ifname);
            let _ = ready_tx.send(());
            let mut sources = Vec::new();
            loop {
                let mut fds = [
                    libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: stop_seen.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // SAFETY: poll(2) on an array we own, with its length.
                let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
                assert!(
                    rc >= 0 || std::io::Error::last_os_error().kind() == ErrorKind::Interrupted,
                    "capture poll: {}",
                    std::io::Error::last_os_error()
                );
                // Asked to stop or not, first take what is queued.
                drain_sources(&fd, &mut sources);
                if fds[1].revents != 0 {
                    return sources;
                }
            }
        });
        ready
            .recv_timeout(Duration::from_secs(10))
            .expect("capture did not start");
        Self { stop, thread }
    }

    /// The source MACs of every frame seen so far (see the type's note on why nothing
    /// the guest has already had completed can be missing).
    pub fn stop(self) -> Vec<[u8; 6]> {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) of an 8-byte buffer we own to our eventfd.
        let n = unsafe { libc::write(self.stop.as_raw_fd(), one.as_ptr().cast(), 8) };
        assert_eq!(
            n,
            8,
            "stop the capture: {}",
            std::io::Error::last_os_error()
        );
        self.thread.join().expect("capture thread")
    }
}

pub fn packet_socket(ifname: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the fd is owned right below.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(
        raw >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let name = std::ffi::CString::new(ifname).expect("interface name");
    // SAFETY: NUL-terminated name valid for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index != 0, "no interface {ifname}");
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index as i32;
    // SAFETY: bind(2) with a properly sized sockaddr_ll that lives across the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "bind packet socket: {}",
        std::io::Error::last_os_error()
    );
    fd
}

/// A network interface entry for the config file.
pub fn iface(id: &str, tap: &str, mac: &str, extra: Value) -> Value {
    let mut v = json!({"iface_id": id, "host_dev_name": tap, "guest_mac": mac});
    if let (Some(obj), Some(more)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in more {
            obj.insert(k.clone(), val.clone());
        }
    }
    v
}

/// A probe config file running `cmds` with `probe.ip=ip` (and `probe.gw=gw`).
pub fn probe_net_config(cmds: &str, ip: &str, gw: Option<&str>, ifaces: Vec<Value>) -> Value {
    let mut args = format!("console=ttyS0 probe.ip={ip}");
    if let Some(gw) = gw {
        args.push_str(&format!(" probe.gw={gw}"));
    }
    args.push_str(&format!(" probe.cmds={cmds}"));
    json!({
        "boot-source": {"kernel_image_path": probe().pvh, "boot_args": args},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "network-interfaces": ifaces,
    })
}

/// Runs a VM to its reset: exit status 0 and `PROBE-DONE` on the console.
pub fn run_to_done(x: &mut Xenia) {
    let status = x.wait_exit(RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        status.success() && x.lines.iter().any(|l| l == "PROBE-DONE"),
        "{status:?}; console:\n{}\nstderr:\n{}",
        x.lines.join("\n"),
        x.stderr()
    );
}

// Each test binary that includes this module uses a different subset.
#[allow(unused_imports)]
pub use xenia_integration_tests::probe_lines::{field, ok_line, result_line};

/// A numeric field, which must be there.
pub fn num(line: &str, key: &str) -> u64 {
    field(line, key)
        .and_then(|v| {
            v.strip_prefix("0x")
                .map_or_else(|| v.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
        })
        .unwrap_or_else(|| panic!("no numeric `{key}` in: {line}"))
}

/// The `net_<iface>` object of the last metrics line in `path`.
pub fn net_metrics(path: &Path, iface: &str) -> Value {
    xenia_integration_tests::last_metrics(path)[format!("net_{iface}")].clone()
}

/// Whether the process `pid` is still running (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}
