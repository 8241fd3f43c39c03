//! Kernel, initrd and command-line loading with linux-loader.
//!
//! An ELF with a PVH note is entered through PVH; an ELF without one, and a bzImage, through
//! the 64-bit Linux boot protocol.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{self, BzImage, KernelLoader};
use virtio::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{low_memory_end, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
use super::regs::EntryProtocol;

/// The 64-bit entry point sits 0x200 bytes into a bzImage's protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 0x1000;

/// Errors while loading the kernel, initrd or command line.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("boot-source.kernel_image_path: cannot open `{path}`: {source}")]
    OpenKernel {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "boot-source.kernel_image_path: `{path}` is neither an ELF (vmlinux) nor a bzImage kernel"
    )]
    NotAKernel { path: String },
    #[error("boot-source.kernel_image_path: cannot load `{path}`: {source}")]
    Load { path: String, source: loader::Error },
    #[error("boot-source.initrd_path: cannot open `{path}`: {source}")]
    OpenInitrd {
        path: String,
        source: std::io::Error,
    },
    #[error("boot-source.initrd_path: `{path}` ({size} bytes) does not fit in guest memory between the kernel end {kernel_end:#x} and {low_end:#x}")]
    InitrdDoesNotFit {
        path: String,
        size: u64,
        kernel_end: u64,
        low_end: u64,
    },
    #[error("boot-source.initrd_path: cannot read `{path}` into guest memory: {source}")]
    ReadInitrd {
        path: String,
        source: vm_memory::GuestMemoryError,
    },
    #[error("boot-source.boot_args: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("boot-source.boot_args: cannot write the command line to guest memory: {0}")]
    WriteCmdline(loader::Error),
}

/// Where and how the loaded kernel is entered.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub entry: u64,
    pub protocol: EntryProtocol,
    /// First byte after the kernel image.
    pub kernel_end: u64,
    /// A bzImage's setup header, which the zero page must start from.
    pub setup_header: Option<setup_header>,
}

fn is_bad_magic(e: &loader::Error) -> bool {
    matches!(
        e,
        loader::Error::Elf(loader::elf::Error::InvalidElfMagicNumber)
    )
}

/// Loads the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &str) -> Result<LoadedKernel, KernelError> {
    let mut file = File::open(path).map_err(|source| KernelError::OpenKernel {
        path: path.to_owned(),
        source,
    })?;
    let load_err = |source| KernelError::Load {
        path: path.to_owned(),
        source,
    };
    let himem = Some(GuestAddress(HIMEM_START));
    match Elf::load(mem, None, &mut file, himem) {
        Ok(res) => {
            let (entry, protocol) = match res.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => (addr.0, EntryProtocol::Pvh),
                _ => (res.kernel_load.0, EntryProtocol::Linux64),
            };
            return Ok(LoadedKernel {
                entry,
                protocol,
                kernel_end: res.kernel_end,
                setup_header: None,
            });
        }
        Err(e) if is_bad_magic(&e) => {}
        Err(e) => return Err(load_err(e)),
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|source| KernelError::OpenKernel {
            path: path.to_owned(),
            source,
        })?;
    match BzImage::load(mem, None, &mut file, himem) {
        Ok(res) => Ok(LoadedKernel {
            entry: res.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
            protocol: EntryProtocol::Linux64,
            kernel_end: res.kernel_end,
            setup_header: res.setup_header,
        }),
        Err(loader::Error::Bzimage(
            loader::bzimage::Error::InvalidBzImage | loader::bzimage::Error::ReadBzImageHeader,
        )) => Err(KernelError::NotAKernel {
            path: path.to_owned(),
        }),
        Err(e) => Err(load_err(e)),
    }
}

/// Places the initrd page-aligned as high as possible in RAM below the MMIO hole, after the
/// kernel. Returns its guest address and size.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel_end: u64,
    path: &str,
) -> Result<(u64, u64), KernelError> {
    let open_err = |source| KernelError::OpenInitrd {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let size = file.metadata().map_err(open_err)?.len();
    let low_end = low_memory_end(mem_size);
    let kernel_end_aligned = kernel_end.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|a| *a >= kernel_end_aligned && size > 0)
        .ok_or(KernelError::InitrdDoesNotFit {
            path: path.to_owned(),
            size,
            kernel_end,
            low_end,
        })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| KernelError::ReadInitrd {
            path: path.to_owned(),
            source,
        })?;
    Ok((addr, size))
}

/// Builds the command line and writes it at [`CMDLINE_START`]; returns its length.
pub fn load_cmdline(mem: &GuestMemoryMmap, args: &str) -> Result<usize, KernelError> {
    let cmdline = Cmdline::try_from(args, CMDLINE_MAX_SIZE).map_err(KernelError::Cmdline)?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(KernelError::WriteCmdline)?;
    let len = cmdline
        .as_cstring()
        .map_err(KernelError::Cmdline)?
        .as_bytes()
        .len();
    Ok(len)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("xenia-kernel-test-{}-{name}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        path
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let p = temp_file("garbage", &[0x42; 4096]);
        let e = load_kernel(&memory(), p.to_str().unwrap()).unwrap_err();
        assert!(matches!(e, KernelError::NotAKernel { .. }), "{e}");
        assert!(e.to_string().contains("kernel_image_path"));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn empty_and_missing_files_are_errors() {
        let p = temp_file("empty", &[]);
        assert!(load_kernel(&memory(), p.to_str().unwrap()).is_err());
        std::fs::remove_file(p).unwrap();
        let e = load_kernel(&memory(), "/nonexistent/kernel").unwrap_err();
        assert!(matches!(e, KernelError::OpenKernel { .. }));
    }

    #[test]
    fn truncated_elf_is_a_load_error() {
        let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        elf.resize(40, 0);
        let p = temp_file("truncated-elf", &elf);
        let e = load_kernel(&memory(), p.to_str().unwrap()).unwrap_err();
        assert!(matches!(e, KernelError::Load { .. }), "{e}");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn initrd_goes_high_page_aligned_and_must_fit() {
        let mem = memory();
        let p = temp_file("initrd", &[7u8; 5000]);
        let (addr, size) = load_initrd(&mem, 16 << 20, 0x20_0000, p.to_str().unwrap()).unwrap();
        assert_eq!(size, 5000);
        assert_eq!(addr % PAGE_SIZE, 0);
        assert!(addr + size <= 16 << 20 && addr + size + PAGE_SIZE > 16 << 20);
        let b: u8 = mem.read_obj(GuestAddress(addr + 4999)).unwrap();
        assert_eq!(b, 7);
        let e = load_initrd(&mem, 16 << 20, (16 << 20) - 4096, p.to_str().unwrap()).unwrap_err();
        assert!(matches!(e, KernelError::InitrdDoesNotFit { .. }));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn cmdline_is_written_nul_terminated() {
        let mem = memory();
        let len = load_cmdline(&mem, "console=ttyS0 probe.cmds=a").unwrap();
        assert_eq!(len, 26);
        let mut buf = [0u8; 27];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0 probe.cmds=a\0");
        assert!(load_cmdline(&mem, &"x".repeat(CMDLINE_MAX_SIZE + 1)).is_err());
    }
}
