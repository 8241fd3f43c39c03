//! `uffd-handler SOCKET MEM_FILE [--die-after N]`: an example page-fault handler for the Uffd
//! memory backend of `PUT /snapshot/load`.
//!
//! It listens on SOCKET, accepts one VMM, receives the userfaultfd and the region list
//! (Firecracker's handshake), maps MEM_FILE read-only, and serves each missing-page fault by
//! copying the page from the file (`UFFDIO_COPY`); pages the guest discarded
//! (`UFFD_EVENT_REMOVE`) are zero-filled when faulted again. It exits when the VMM closes
//! the connection. `--die-after N` exits after N faults: a handler that dies, for tests.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::process::ExitCode;

use vmm::persist::uffd::{receive, UffdRegion, UFFD_EVENT_PAGEFAULT, UFFD_EVENT_REMOVE};

struct Mapping {
    ptr: *const u8,
    len: u64,
}

fn map_file(path: &str) -> Result<Mapping, String> {
    let file = File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let len = file.metadata().map_err(|e| format!("{path}: {e}"))?.len();
    // SAFETY: a new read-only private mapping of a file we opened; the kernel picks the
    // address. It lives until the process exits.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(format!("mmap {path}: {}", std::io::Error::last_os_error()));
    }
    Ok(Mapping {
        ptr: ptr.cast(),
        len,
    })
}

fn run(args: &[String]) -> Result<(), String> {
    let (socket, mem) = match args {
        [s, m] | [s, m, _, _] => (s, m),
        _ => return Err("usage: uffd-handler SOCKET MEM_FILE [--die-after N]".into()),
    };
    let die_after: Option<u64> = match args {
        [_, _, flag, n] if flag == "--die-after" => Some(
            n.parse()
                .map_err(|_| format!("--die-after: `{n}` is not a number"))?,
        ),
        [_, _, other, _] => return Err(format!("unknown argument `{other}`")),
        _ => None,
    };
    let file = map_file(mem)?;
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(|e| format!("bind {socket}: {e}"))?;
    let (stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    let (uffd, regions) = receive(&stream).map_err(|e| format!("handshake: {e}"))?;
    for r in &regions {
        if r.offset
            .checked_add(r.size)
            .is_none_or(|end| end > file.len)
        {
            return Err(format!(
                "region {r:?} lies outside {mem} ({} bytes)",
                file.len
            ));
        }
    }
    // Discarded ranges (start -> end), zero-filled when faulted again.
    let mut removed: BTreeMap<u64, u64> = BTreeMap::new();
    let mut served = 0u64;
    let mut fds = [
        libc::pollfd {
            fd: uffd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: poll(2) on two pollfds that live across the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        if fds[1].revents != 0 {
            // The VMM closed the connection (or wrote, which the protocol does not do).
            return Ok(());
        }
        while let Some((event, a, b)) = uffd.read_event().map_err(|e| format!("read: {e}"))? {
            match event {
                UFFD_EVENT_PAGEFAULT => {
                    serve(&uffd, &regions, &file, &mut removed, a)?;
                    served += 1;
                    if die_after.is_some_and(|n| served >= n) {
                        return Err(format!("dying after {served} faults, as asked"));
                    }
                }
                UFFD_EVENT_REMOVE => {
                    removed.insert(a, b);
                }
                _ => {}
            }
        }
    }
}

fn serve(
    uffd: &vmm::persist::uffd::UffdHandle,
    regions: &[UffdRegion],
    file: &Mapping,
    removed: &mut BTreeMap<u64, u64>,
    addr: u64,
) -> Result<(), String> {
    let r = regions
        .iter()
        .find(|r| (r.base_host_virt_addr..r.base_host_virt_addr + r.size).contains(&addr))
        .ok_or_else(|| format!("fault at {addr:#x} outside every region"))?;
    let page = addr & !(r.page_size - 1);
    let was_removed = removed
        .range(..=page)
        .next_back()
        .is_some_and(|(_, &end)| page < end);
    let result = if was_removed {
        uffd.zero(page, r.page_size)
    } else {
        let offset = r.offset + (page - r.base_host_virt_addr);
        // SAFETY: offset + page_size is inside the file mapping (checked per region above).
        let src = unsafe { file.ptr.add(offset as usize) };
        uffd.copy(page, src, r.page_size)
    };
    result.map_err(|e| format!("serving {page:#x}: {e}"))
}

#[allow(clippy::print_stderr)]
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uffd-handler: {e}");
            ExitCode::FAILURE
        }
    }
}
