//! Test helpers: a real tap created with `ip`, and a packet socket on its host side.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::iovec::IoVecStorage;
use super::tap::Tap;

/// An experimental ethertype (IEEE 802 local use) so stray host traffic is easy to skip.
pub const TEST_ETHERTYPE: u16 = 0x88b5;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tap interface that exists for the test's lifetime.
pub struct TestTap {
    name: String,
}

impl TestTap {
    pub fn new() -> TestTap {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "xnt{}_{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["tuntap", "add", "dev", &name, "mode", "tap"]);
        // No IPv6 autoconfiguration chatter on the test interface.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        TestTap { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn up(&self) {
        ip(&["link", "set", "dev", &self.name, "up"]);
    }

    pub fn set_mtu(&self, mtu: u16) {
        ip(&["link", "set", "dev", &self.name, "mtu", &mtu.to_string()]);
    }

    /// Deletes the interface now (a tap vanishing under a running VM).
    pub fn delete(&self) {
        let _ = Command::new("ip")
            .args(["link", "del", "dev", &self.name])
            .output();
    }
}

impl Drop for TestTap {
    fn drop(&mut self) {
        self.delete();
    }
}

/// A frame to `ff:..:ff` from `src` with the test ethertype, `marker` as first payload byte.
pub fn test_frame(src: [u8; 6], marker: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src);
    f.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    f.push(marker);
    while f.len() < len.max(60) {
        f.push((f.len() % 251) as u8);
    }
    f
}

fn is_test_frame(f: &[u8], marker: u8) -> bool {
    f.len() > 14 && f[12..14] == TEST_ETHERTYPE.to_be_bytes() && f[14] == marker
}

/// Waits up to `timeout` for `fd` to be readable.
pub fn wait_readable(fd: i32, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `p` is a valid pollfd for the duration of the call; nfds is 1.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// An AF_PACKET socket bound to one interface: sees frames the tap writer sent, and injects
/// frames that the kernel then queues to the tap reader.
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    pub fn bind(ifname: &str) -> PacketSocket {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let c = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: `c` is a valid C string for the call.
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert!(index > 0);
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        // SAFETY: `sll` is a valid sockaddr_ll and the length matches it.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        PacketSocket { fd }
    }

    pub fn send(&self, frame: &[u8]) {
        // SAFETY: the buffer is valid for `frame.len()` bytes during the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    }

    /// A frame already queued on the socket, if any (never waits).
    pub fn try_recv(&self, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the socket is non-blocking.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        usize::try_from(n).ok()
    }

    /// The next frame carrying `marker`, or `None` after a generous timeout.
    pub fn recv_matching(&self, marker: u8) -> Option<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 70_000];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if !wait_readable(self.fd.as_raw_fd(), left) {
                return None;
            }
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 && is_test_frame(&buf[..n as usize], marker) {
                return Some(buf[..n as usize].to_vec());
            }
        }
        None
    }

    /// The next frame with the test ethertype, whatever its marker.
    pub fn next_test_frame(&self) -> Option<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 70_000];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if !wait_readable(self.fd.as_raw_fd(), left) {
                return None;
            }
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 14 && buf[12..14] == TEST_ETHERTYPE.to_be_bytes() {
                return Some(buf[..n as usize].to_vec());
            }
        }
        None
    }
}

/// Reads frames from the tap fd until one carries `marker`; returns its length with header.
pub fn read_tap_matching(
    tap: &Tap,
    storage: &mut IoVecStorage,
    buf: &mut [u8],
    marker: u8,
) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if !wait_readable(tap.as_raw_fd(), left) {
            return None;
        }
        let n = {
            let mut iovs = storage.borrow();
            iovs.push_bytes_mut(&mut *buf);
            tap.readv(&iovs)
        };
        if let Ok(n) = n {
            if n > 12 && is_test_frame(&buf[12..n], marker) {
                return Some(n);
            }
        }
    }
    None
}
