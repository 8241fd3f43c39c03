//! The tap backend: an existing Linux tap interface opened through `/dev/net/tun`.
//!
//! The control plane creates the tap (as with Firecracker); we only attach to it, with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, non-blocking. Every frame crossing the fd is preceded
//! by a virtio-net header, so guest checksum and segmentation offloads pass through untouched.
//! All the `unsafe` of the backend lives in this file.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::iovec::IoVecs;

const TUN_PATH: &str = "/dev/net/tun";
/// `IFNAMSIZ`: the kernel's interface name buffer, NUL included.
const IFNAMSIZ: usize = 16;

/// Offload bits for `TUNSETOFFLOAD` (linux/if_tun.h): what this reader accepts from the kernel.
pub mod offload {
    pub const CSUM: u32 = libc::TUN_F_CSUM;
    pub const TSO4: u32 = libc::TUN_F_TSO4;
    pub const TSO6: u32 = libc::TUN_F_TSO6;
    pub const TSO_ECN: u32 = libc::TUN_F_TSO_ECN;
    pub const UFO: u32 = libc::TUN_F_UFO;
}

/// Errors from the tap backend.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap `{name}` is not a valid interface name (1 to 15 bytes, no NUL)")]
    InvalidName { name: String },
    #[error("tap `{name}` does not exist (the control plane must create it before the VM starts)")]
    NotFound { name: String },
    #[error("cannot open {TUN_PATH} for tap `{name}`: {source}")]
    OpenTun { name: String, source: io::Error },
    #[error("cannot attach to tap `{name}` (TUNSETIFF; is it a tap device not in use?): {source}")]
    Attach { name: String, source: io::Error },
    #[error(
        "cannot set the vnet header size of tap `{name}` to {size} (TUNSETVNETHDRSZ): {source}"
    )]
    VnetHdrSize {
        name: String,
        size: i32,
        source: io::Error,
    },
    #[error("tap `{name}` refused offload flags {flags:#x} (TUNSETOFFLOAD): {source}")]
    Offload {
        name: String,
        flags: u32,
        source: io::Error,
    },
}

/// The `struct ifreq` layout TUNSETIFF reads: a name and the flags word of the union.
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; IFNAMSIZ],
    flags: libc::c_short,
    // The kernel copies the whole `struct ifreq` (40 bytes on x86_64).
    _pad: [u8; 22],
}

/// An open tap queue.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the existing tap `name`. Fails with [`TapError::NotFound`] if there is no
    /// such interface: TUNSETIFF would otherwise silently create one.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        let invalid = || TapError::InvalidName { name: name.into() };
        if name.is_empty() || name.len() >= IFNAMSIZ {
            return Err(invalid());
        }
        let c_name = CString::new(name).map_err(|_| invalid())?;
        // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call.
        if unsafe { libc::if_nametoindex(c_name.as_ptr()) } == 0 {
            return Err(TapError::NotFound { name: name.into() });
        }

        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|source| TapError::OpenTun {
                name: name.into(),
                source,
            })?;

        let mut req = IfReqFlags {
            name: [0; IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(c_name.as_bytes()) {
            *dst = *src as libc::c_char;
        }
        // SAFETY: `file` is an open tun fd and `req` is a properly sized, initialized `ifreq`
        // that lives across the call; TUNSETIFF reads and writes only within it.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if ret < 0 {
            return Err(TapError::Attach {
                name: name.into(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            file,
            name: name.into(),
        })
    }

    /// The host interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the size of the virtio-net header that precedes every frame on the fd.
    pub fn set_vnet_hdr_size(&self, size: i32) -> Result<(), TapError> {
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid for the call.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) };
        if ret < 0 {
            return Err(TapError::VnetHdrSize {
                name: self.name.clone(),
                size,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Tells the kernel which offloads the reader (the guest) accepts in received frames.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // TUNSETOFFLOAD takes the flags by value, not through a pointer.
        // SAFETY: the ioctl reads only its integer argument; the fd is a tun fd we own.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(TapError::Offload {
                name: self.name.clone(),
                flags,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Sets `wanted`, or the largest subset the kernel accepts: it may refuse UFO (removed in
    /// 4.14, back for virtio only later) or ECN. Returns the flags in effect.
    pub fn negotiate_offload(&self, wanted: u32) -> u32 {
        let fallbacks = [
            wanted,
            wanted & !offload::UFO,
            wanted & !(offload::UFO | offload::TSO_ECN),
            wanted & offload::CSUM,
        ];
        for flags in fallbacks {
            match self.set_offload(flags) {
                Ok(()) => return flags,
                Err(e) => log::debug!("{e}; trying fewer offloads"),
            }
        }
        match self.set_offload(0) {
            Ok(()) => 0,
            Err(e) => {
                log::warn!("{e}; the tap keeps its previous offloads");
                0
            }
        }
    }

    /// Reads one frame (header included) into `iovs`. A frame longer than the buffers is
    /// truncated by the kernel.
    pub fn readv(&self, iovs: &IoVecs<'_, '_>) -> io::Result<usize> {
        let (ptr, count) = iovs.as_raw();
        // SAFETY: `IoVecs` only holds iovecs built from live, writable guest-memory slices
        // borrowed for its lifetime `'m`, which spans this call; `count` is its exact length.
        let n = unsafe { libc::readv(self.file.as_raw_fd(), ptr, count) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Writes one frame (header included) gathered from `iovs`.
    pub fn writev(&self, iovs: &IoVecs<'_, '_>) -> io::Result<usize> {
        let (ptr, count) = iovs.as_raw();
        // SAFETY: as in `readv`; writev only reads the buffers.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), ptr, count) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::iovec::IoVecStorage;
    use crate::net::test_utils::{PacketSocket, TestTap};

    #[test]
    fn open_missing_tap_names_the_device() {
        let e = Tap::open("xenia-nope0").unwrap_err();
        assert!(matches!(e, TapError::NotFound { .. }));
        assert!(e.to_string().contains("xenia-nope0"), "{e}");
        let e = Tap::open("a-name-much-too-long").unwrap_err();
        assert!(matches!(e, TapError::InvalidName { .. }), "{e}");
        let e = Tap::open("lo").unwrap_err();
        assert!(matches!(e, TapError::Attach { .. }), "{e}");
    }

    #[test]
    fn offloads_and_header_size() {
        let t = TestTap::new();
        let tap = Tap::open(t.name()).unwrap();
        tap.set_vnet_hdr_size(12).unwrap();
        let all = offload::CSUM | offload::TSO4 | offload::TSO6 | offload::TSO_ECN | offload::UFO;
        let got = tap.negotiate_offload(all);
        // Checksum and TSO are accepted by every kernel since 2.6.27.
        assert_eq!(
            got & (offload::CSUM | offload::TSO4 | offload::TSO6),
            offload::CSUM | offload::TSO4 | offload::TSO6
        );
        assert_eq!(tap.negotiate_offload(0), 0);
        // TSO without checksum offload is invalid: the kernel refuses it.
        assert!(tap.set_offload(offload::TSO4).is_err());
    }

    #[test]
    fn writev_reaches_the_interface_and_readv_gets_frames() {
        let t = TestTap::new();
        let tap = Tap::open(t.name()).unwrap();
        tap.set_vnet_hdr_size(12).unwrap();
        t.up();
        let sock = PacketSocket::bind(t.name());
        let mut storage = IoVecStorage::with_capacity(4);

        // Guest -> host: header and frame in separate buffers, as a driver may post them.
        let hdr = [0u8; 12];
        let frame = crate::net::test_utils::test_frame([2, 0, 0, 0, 0, 1], 0xa5, 100);
        {
            let mut iovs = storage.borrow();
            assert!(iovs.push_bytes(&hdr));
            assert!(iovs.push_bytes(&frame));
            assert_eq!(tap.writev(&iovs).unwrap(), 12 + frame.len());
        }
        let seen = sock
            .recv_matching(0xa5)
            .expect("frame did not reach the interface");
        assert_eq!(seen, frame);

        // Host -> guest.
        let frame = crate::net::test_utils::test_frame([2, 0, 0, 0, 0, 2], 0x5a, 300);
        sock.send(&frame);
        let mut buf = vec![0u8; 2048];
        let n = crate::net::test_utils::read_tap_matching(&tap, &mut storage, &mut buf, 0x5a)
            .expect("frame did not reach the tap fd");
        assert_eq!(&buf[12..n], &frame[..]);
    }
}
