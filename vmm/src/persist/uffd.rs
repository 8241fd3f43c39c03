//! The Uffd memory backend: guest memory is anonymous and registered with a userfaultfd whose
//! faults an outside page-fault handler serves (from the memory file, over the network, ...).
//!
//! Firecracker's handshake, exactly: xenia connects (SOCK_STREAM) to `backend_path` and sends
//! one message carrying the userfaultfd (`SCM_RIGHTS`) and a UTF-8 JSON array of regions
//! `[{"base_host_virt_addr", "size", "offset", "page_size", "page_size_kib"}]` (`offset` in the
//! memory file; both page sizes in bytes, the second misnamed as in Firecracker). The socket
//! stays open for the life of the VM; nothing else is sent. `UFFD_FEATURE_EVENT_REMOVE` is
//! requested, so a handler learns when ranges are discarded and must zero-fill them after.
//!
//! The ioctl structures are small and fixed by the kernel ABI, so they are declared here
//! rather than pulled in with a crate; [`UffdHandle`] has the calls a handler needs too.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use super::RegionState;
use virtio::GuestMemoryMmap;

const UFFD_API: u64 = 0xaa;
/// `UFFD_FEATURE_EVENT_REMOVE`: madvise(MADV_DONTNEED/REMOVE) on a registered range is
/// reported to the handler.
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// `uffd_msg.event` of a page fault.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// `uffd_msg.event` of a removed range.
pub const UFFD_EVENT_REMOVE: u8 = 0x15;

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// `_IOWR(0xAA, nr, size)`.
const fn uffd_iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (0xaa << 8) | nr
}

const UFFDIO_API: u64 = uffd_iowr(0x3f, std::mem::size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = uffd_iowr(0x00, std::mem::size_of::<UffdioRegister>());
const UFFDIO_COPY: u64 = uffd_iowr(0x03, std::mem::size_of::<UffdioCopy>());
const UFFDIO_ZEROPAGE: u64 = uffd_iowr(0x04, std::mem::size_of::<UffdioZeropage>());
/// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd`: `_IO(0xAA, 0x00)`.
const USERFAULTFD_IOC_NEW: u64 = 0xaa << 8;

/// One region as the handler is told about it (Firecracker's field names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UffdRegion {
    pub base_host_virt_addr: u64,
    pub size: u64,
    pub offset: u64,
    pub page_size: u64,
    /// Bytes, despite the name (kept for Firecracker handlers).
    pub page_size_kib: u64,
}

/// Errors while setting up the Uffd backend; each names the step.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    #[error(
        "cannot create a userfaultfd (neither the userfaultfd syscall nor /dev/userfaultfd): {0}"
    )]
    Create(std::io::Error),
    #[error("UFFDIO_API failed: {0}")]
    Api(std::io::Error),
    #[error("this kernel's userfaultfd lacks UFFD_FEATURE_EVENT_REMOVE")]
    NoEventRemove,
    #[error("UFFDIO_REGISTER of guest memory at {addr:#x} failed: {source}")]
    Register { addr: u64, source: std::io::Error },
    #[error("guest memory region at {0:#x} has no host mapping")]
    HostAddress(u64),
    #[error(
        "mem_backend.backend_path `{path}`: cannot connect to the page-fault handler: {source}"
    )]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("mem_backend.backend_path `{path}`: cannot send the userfaultfd: {source}")]
    Send {
        path: String,
        source: std::io::Error,
    },
}

fn ioctl<T>(fd: RawFd, request: u64, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: `arg` is the structure `request` reads and writes (sizes encoded in the request
    // number match `T`); the descriptor is a userfaultfd we own.
    let ret = unsafe { libc::ioctl(fd, request as libc::c_ulong, arg as *mut T) };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A userfaultfd with the API handshake done.
#[derive(Debug)]
pub struct UffdHandle {
    fd: OwnedFd,
}

impl AsRawFd for UffdHandle {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl UffdHandle {
    /// A new userfaultfd (non-blocking, close-on-exec) asking for `UFFD_FEATURE_EVENT_REMOVE`.
    pub fn new() -> Result<Self, UffdError> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: the userfaultfd syscall takes only flags and returns a new descriptor.
        let raw = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) } as RawFd;
        let fd = if raw >= 0 {
            // SAFETY: a fresh descriptor the kernel just returned; nobody else owns it.
            unsafe { OwnedFd::from_raw_fd(raw) }
        } else {
            // Unprivileged callers (a jailed xenia) may only have /dev/userfaultfd.
            let dev = std::fs::File::open("/dev/userfaultfd").map_err(UffdError::Create)?;
            // SAFETY: USERFAULTFD_IOC_NEW takes the flags as its argument and returns a new
            // descriptor.
            let raw = unsafe {
                libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as libc::c_ulong, flags)
            };
            if raw < 0 {
                return Err(UffdError::Create(std::io::Error::last_os_error()));
            }
            // SAFETY: as above.
            unsafe { OwnedFd::from_raw_fd(raw) }
        };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_EVENT_REMOVE,
            ioctls: 0,
        };
        ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api).map_err(UffdError::Api)?;
        if api.features & UFFD_FEATURE_EVENT_REMOVE == 0 {
            return Err(UffdError::NoEventRemove);
        }
        Ok(Self { fd })
    }

    /// Takes over a userfaultfd received from a VMM (the handler's side).
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Registers `[addr, addr + len)` for missing-page faults.
    pub fn register(&self, addr: u64, len: u64) -> Result<(), UffdError> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start: addr, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER, &mut reg)
            .map_err(|source| UffdError::Register { addr, source })
    }

    /// Handler side: fills the faulting range `[dst, dst + len)` with a copy of
    /// `[src, src + len)` and wakes the faulting thread. EEXIST (another fault on the same
    /// page was served first) is success.
    pub fn copy(&self, dst: u64, src: *const u8, len: u64) -> std::io::Result<()> {
        let mut c = UffdioCopy {
            dst,
            src: src as u64,
            len,
            mode: 0,
            copy: 0,
        };
        match ioctl(self.fd.as_raw_fd(), UFFDIO_COPY, &mut c) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Handler side: maps zero pages at `[dst, dst + len)` and wakes the faulting thread.
    pub fn zero(&self, dst: u64, len: u64) -> std::io::Result<()> {
        let mut z = UffdioZeropage {
            range: UffdioRange { start: dst, len },
            mode: 0,
            zeropage: 0,
        };
        match ioctl(self.fd.as_raw_fd(), UFFDIO_ZEROPAGE, &mut z) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Handler side: the next event, `None` when none is pending. Returns (event, a, b):
    /// for a page fault (address, flags), for a remove (start, end).
    pub fn read_event(&self) -> std::io::Result<Option<(u8, u64, u64)>> {
        let mut msg = [0u8; 32];
        // SAFETY: reading at most 32 bytes (one uffd_msg) into a 32-byte buffer.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), msg.as_mut_ptr().cast(), msg.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EAGAIN) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        if n as usize != msg.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "short userfaultfd message",
            ));
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&msg[at..at + 8]);
            u64::from_le_bytes(w)
        };
        // uffd_msg: event (u8), 7 reserved bytes, then the union.
        Ok(Some(match msg[0] {
            UFFD_EVENT_PAGEFAULT => (msg[0], word(16), word(8)),
            other => (other, word(8), word(16)),
        }))
    }
}

/// The regions of `mem` for the handler, with their offsets in the memory file.
pub fn uffd_regions(
    mem: &GuestMemoryMmap,
    regions: &[RegionState],
    page_size: u64,
) -> Result<Vec<UffdRegion>, UffdError> {
    regions
        .iter()
        .map(|r| {
            let region = mem
                .find_region(vm_memory::GuestAddress(r.guest_addr))
                .ok_or(UffdError::HostAddress(r.guest_addr))?;
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| UffdError::HostAddress(r.guest_addr))?;
            Ok(UffdRegion {
                base_host_virt_addr: host as u64,
                size: region.len(),
                offset: r.file_offset,
                page_size,
                page_size_kib: page_size,
            })
        })
        .collect()
}

/// Registers every region with a new userfaultfd and hands it to the handler listening on
/// `path`. Returns the connection, which must stay open while the VM lives, and the
/// userfaultfd (xenia keeps its copy, so a handler that dies leaves faults pending rather
/// than silently turning guest memory into zeros).
pub fn hand_over(
    path: &str,
    mem: &GuestMemoryMmap,
    regions: &[RegionState],
    page_size: u64,
) -> Result<(UnixStream, UffdHandle), UffdError> {
    let uffd = UffdHandle::new()?;
    let described = uffd_regions(mem, regions, page_size)?;
    for r in &described {
        uffd.register(r.base_host_virt_addr, r.size)?;
    }
    let stream = UnixStream::connect(path).map_err(|source| UffdError::Connect {
        path: path.to_owned(),
        source,
    })?;
    let body = serde_json::to_vec(&described).unwrap_or_default();
    send_with_fd(&stream, &body, uffd.as_raw_fd()).map_err(|source| UffdError::Send {
        path: path.to_owned(),
        source,
    })?;
    Ok((stream, uffd))
}

/// One `sendmsg` of `body` with `fd` attached (`SCM_RIGHTS`).
fn send_with_fd(stream: &UnixStream, body: &[u8], fd: RawFd) -> std::io::Result<()> {
    let iov = [IoSlice::new(body)];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: a zeroed msghdr is valid; its pointers are set just below to live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg_control points to `space` bytes, room for one cmsg carrying one fd;
    // CMSG_FIRSTHDR/CMSG_DATA stay inside it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    // SAFETY: every buffer `msg` points to lives across the call.
    let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if n as usize != body.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "the region list was sent in part",
        ));
    }
    Ok(())
}

/// Handler side: receives the userfaultfd and the region list from a VMM connection.
pub fn receive(stream: &UnixStream) -> std::io::Result<(UffdHandle, Vec<UffdRegion>)> {
    let mut body = vec![0u8; 64 * 1024];
    let mut iov = [libc::iovec {
        iov_base: body.as_mut_ptr().cast(),
        iov_len: body.len(),
    }];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: a zeroed msghdr is valid; its pointers are set just below to live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: every buffer `msg` points to lives across the call.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n <= 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "no handshake message",
        ));
    }
    // SAFETY: recvmsg filled `control` (msg_controllen says how much); CMSG_FIRSTHDR
    // returns null when there is no control message.
    let fd = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the handshake carried no descriptor",
            ));
        }
        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>())
    };
    // SAFETY: SCM_RIGHTS gave this process a new descriptor that nothing else owns.
    let uffd = UffdHandle::from_fd(unsafe { OwnedFd::from_raw_fd(fd) });
    let regions = serde_json::from_slice(&body[..n as usize])
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok((uffd, regions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // From <linux/userfaultfd.h> on x86_64.
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE, 0xc020_aa04);
    }

    #[test]
    fn the_region_list_uses_firecrackers_names() {
        let r = UffdRegion {
            base_host_virt_addr: 0x7f00_0000_0000,
            size: 1 << 20,
            offset: 0,
            page_size: 4096,
            page_size_kib: 4096,
        };
        let text = serde_json::to_string(&[r]).unwrap();
        assert_eq!(
            text,
            r#"[{"base_host_virt_addr":139637976727552,"size":1048576,"offset":0,"page_size":4096,"page_size_kib":4096}]"#
        );
    }
}
