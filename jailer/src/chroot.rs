//! The jail on disk: `<base>/<exec-file-name>/<id>/root/`, its lock, and the
//! mount-namespace switch into it.
//!
//! Everything here is idempotent: a jail left behind by a crash (or by a
//! failure after `pivot_root`, when the jailer can no longer reach it) is
//! rebuilt in place by the next start with the same id.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::sys;

/// `/dev/kvm` is misc device 10:232, `/dev/net/tun` 10:200 on every Linux.
const KVM_DEV: (u32, u32) = (10, 232);
const TUN_DEV: (u32, u32) = (10, 200);
/// Name of the lock file in `<base>/<exec-file-name>/<id>/`, outside the chroot.
pub const LOCK_FILE: &str = ".xenia-jailer.lock";

#[derive(Debug, thiserror::Error)]
pub enum ChrootError {
    #[error("create directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("open lock file {path}: {source}")]
    OpenLock { path: PathBuf, source: io::Error },
    #[error(
        "a jail with this id is already running (lock {path} is held); \
         pick another id or stop that process first"
    )]
    AlreadyRunning { path: PathBuf },
    #[error("lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("read exec file {path}: {source}")]
    ReadExec { path: PathBuf, source: io::Error },
    #[error(
        "exec file {path} is dynamically linked (it names an ELF interpreter); the jail holds \
         only the exec file, so build it statically (e.g. RUSTFLAGS=\"-C target-feature=+crt-static\")"
    )]
    DynamicExec { path: PathBuf },
    #[error("exec file {path} is not a 64-bit little-endian ELF executable")]
    NotElf { path: PathBuf },
    #[error("copy exec file {from} to {to}: {source}")]
    CopyExec {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("remove stale {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("create device node {path}: {source}")]
    Mknod { path: PathBuf, source: io::Error },
    #[error("read host device {path} (needed for its device number): {source}")]
    HostDevice { path: PathBuf, source: io::Error },
    #[error("set owner or mode of {path}: {source}")]
    Chown { path: PathBuf, source: io::Error },
    #[error("open /dev/null: {source}")]
    DevNull { source: io::Error },
    #[error("{step} (while entering the jail {root}): {source}")]
    Enter {
        step: &'static str,
        root: PathBuf,
        source: io::Error,
    },
    #[error("remove jail {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// Where one jail lives.
#[derive(Debug, Clone)]
pub struct JailPaths {
    /// `<base>/<exec-file-name>/<id>`.
    pub jail_dir: PathBuf,
    /// `<jail_dir>/root`: becomes `/` of the jailed process.
    pub root: PathBuf,
    /// The copy of the exec file, `<root>/<exec-file-name>`.
    pub exec_copy: PathBuf,
    pub exec_file_name: String,
}

impl JailPaths {
    pub fn new(chroot_base: &Path, exec_file_name: &str, id: &str) -> Self {
        let jail_dir = chroot_base.join(exec_file_name).join(id);
        let root = jail_dir.join("root");
        let exec_copy = root.join(exec_file_name);
        JailPaths {
            jail_dir,
            root,
            exec_copy,
            exec_file_name: exec_file_name.to_string(),
        }
    }

    /// Path of the exec file as the jailed process sees it.
    pub fn exec_in_jail(&self) -> PathBuf {
        Path::new("/").join(&self.exec_file_name)
    }

    /// Where the pid of a forked child is recorded, inside the jail (as Firecracker).
    pub fn pid_file_in_jail(&self) -> PathBuf {
        Path::new("/").join(format!("{}.pid", self.exec_file_name))
    }
}

/// Undo list for what this start created, run on an error before the exec.
#[derive(Debug, Default)]
pub struct Rollback {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Rollback {
    pub fn file(&mut self, path: PathBuf) {
        self.files.push(path);
    }

    pub fn dir(&mut self, path: PathBuf) {
        self.dirs.push(path);
    }

    /// Removes what was recorded, newest first; failures are ignored (best effort:
    /// a leftover is rebuilt by the next start anyway).
    pub fn undo(self) {
        for f in self.files.iter().rev() {
            let _ = fs::remove_file(f);
        }
        for d in self.dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

/// Creates `path` and any missing parents, recording the ones it created.
pub fn create_dirs(path: &Path, mode: u32, rollback: &mut Rollback) -> Result<(), ChrootError> {
    let mut missing = Vec::new();
    let mut cur = Some(path);
    while let Some(p) = cur {
        if p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        cur = p.parent();
    }
    for dir in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(mode).create(&dir) {
            Ok(()) => rollback.dir(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(ChrootError::CreateDir { path: dir, source }),
        }
    }
    Ok(())
}

/// Creates the jail directory and takes its lock; the returned file holds the
/// lock and is handed to the jailed process, so the lock lives as long as it does.
pub fn lock(paths: &JailPaths, rollback: &mut Rollback) -> Result<File, ChrootError> {
    create_dirs(&paths.jail_dir, 0o755, rollback)?;
    let path = paths.jail_dir.join(LOCK_FILE);
    let existed = path.exists();
    let open_err = |source| ChrootError::OpenLock {
        path: path.clone(),
        source,
    };
    if !existed {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o400)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(open_err)?;
    }
    // Read-only: the jailed process inherits this descriptor and must not be
    // able to write through it to a file outside its jail.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(open_err)?;
    if !existed {
        rollback.file(path.clone());
    }
    match sys::try_lock_exclusive(file.as_raw_fd()) {
        Ok(()) => Ok(file),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
            Err(ChrootError::AlreadyRunning { path })
        }
        Err(source) => Err(ChrootError::Lock { path, source }),
    }
}

/// Refuses an exec file that needs a dynamic loader: it could not start in the jail.
pub fn check_static_elf(path: &Path) -> Result<(), ChrootError> {
    let read_err = |source| ChrootError::ReadExec {
        path: path.to_path_buf(),
        source,
    };
    let mut head = Vec::new();
    File::open(path)
        .map_err(read_err)?
        .take(64 * 1024)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    match elf_has_interpreter(&head) {
        Some(false) => Ok(()),
        Some(true) => Err(ChrootError::DynamicExec {
            path: path.to_path_buf(),
        }),
        None => Err(ChrootError::NotElf {
            path: path.to_path_buf(),
        }),
    }
}

/// `Some(true)` if the ELF64 image has a `PT_INTERP` program header, `None` if
/// `head` is not a little-endian ELF64 or its program headers are not within it.
fn elf_has_interpreter(head: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        Some(u16::from_le_bytes(
            head.get(o..o.checked_add(2)?)?.try_into().ok()?,
        ))
    };
    let u32_at = |o: usize| {
        Some(u32::from_le_bytes(
            head.get(o..o.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    let u64_at = |o: usize| {
        Some(u64::from_le_bytes(
            head.get(o..o.checked_add(8)?)?.try_into().ok()?,
        ))
    };
    // Magic, ELFCLASS64, ELFDATA2LSB.
    if head.get(0..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    if phentsize < 4 {
        return None;
    }
    for i in 0..phnum {
        let entry = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(entry)? == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

/// What the jail is built for.
pub struct Tenant<'a> {
    pub exec_file: &'a Path,
    pub uid: u32,
    pub gid: u32,
    pub userfaultfd: bool,
}

/// Builds `root/` with the exec copy and the device nodes, owned by the tenant.
pub fn build(
    paths: &JailPaths,
    tenant: &Tenant,
    rollback: &mut Rollback,
) -> Result<(), ChrootError> {
    let root = &paths.root;
    create_dirs(root, 0o700, rollback)?;
    set_owner(root, tenant.uid, tenant.gid, 0o700)?;
    copy_exec(tenant.exec_file, &paths.exec_copy, rollback)?;

    let dev = root.join("dev");
    let net = dev.join("net");
    create_dirs(&net, 0o755, rollback)?;
    make_device(&dev.join("kvm"), KVM_DEV, tenant, rollback)?;
    make_device(&net.join("tun"), TUN_DEV, tenant, rollback)?;
    if tenant.userfaultfd {
        let host = Path::new("/dev/userfaultfd");
        let rdev = fs::metadata(host)
            .map(|m| std::os::unix::fs::MetadataExt::rdev(&m))
            .map_err(|source| ChrootError::HostDevice {
                path: host.to_path_buf(),
                source,
            })?;
        let number = (libc::major(rdev), libc::minor(rdev));
        make_device(&dev.join("userfaultfd"), number, tenant, rollback)?;
    }
    Ok(())
}

fn set_owner(path: &Path, uid: u32, gid: u32, mode: u32) -> Result<(), ChrootError> {
    let chown_err = |source| ChrootError::Chown {
        path: path.to_path_buf(),
        source,
    };
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(chown_err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(chown_err)
}

/// A real copy, not a link: jails share no page cache for the binary, and the
/// tenant cannot modify the host's file. Root-owned and read/execute only.
fn copy_exec(from: &Path, to: &Path, rollback: &mut Rollback) -> Result<(), ChrootError> {
    remove_stale(to)?;
    let copy_err = |source| ChrootError::CopyExec {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    };
    let mut src = File::open(from).map_err(copy_err)?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o500)
        .open(to)
        .map_err(copy_err)?;
    rollback.file(to.to_path_buf());
    io::copy(&mut src, &mut dst).map_err(copy_err)?;
    // 0555: every tenant uid may run it, none may change it.
    dst.set_permissions(fs::Permissions::from_mode(0o555))
        .map_err(copy_err)?;
    Ok(())
}

fn remove_stale(path: &Path) -> Result<(), ChrootError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ChrootError::RemoveStale {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn make_device(
    path: &Path,
    (major, minor): (u32, u32),
    tenant: &Tenant,
    rollback: &mut Rollback,
) -> Result<(), ChrootError> {
    // A leftover node might have been swapped by its old tenant: always recreate.
    remove_stale(path)?;
    sys::mknod_char(path, 0o600, major, minor).map_err(|source| ChrootError::Mknod {
        path: path.to_path_buf(),
        source,
    })?;
    rollback.file(path.to_path_buf());
    set_owner(path, tenant.uid, tenant.gid, 0o600)
}

/// Opens `/dev/null` while it is still reachable, for `--daemonize`.
pub fn open_dev_null() -> Result<File, ChrootError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|source| ChrootError::DevNull { source })
}

/// Makes `root` the root of a new mount namespace; the host's tree is unmounted
/// from it, so nothing outside `root` stays reachable by path.
pub fn enter(root: &Path) -> Result<(), ChrootError> {
    let step = |step: &'static str| {
        move |source| ChrootError::Enter {
            step,
            root: root.to_path_buf(),
            source,
        }
    };
    sys::unshare(libc::CLONE_NEWNS).map_err(step("unshare the mount namespace"))?;
    // Private: nothing we mount or unmount from here on propagates to the host.
    sys::mount(None, Path::new("/"), libc::MS_PRIVATE | libc::MS_REC)
        .map_err(step("make / private"))?;
    // pivot_root needs the new root to be a mount point.
    sys::mount(Some(root), root, libc::MS_BIND).map_err(step("bind-mount the jail root"))?;
    std::env::set_current_dir(root).map_err(step("chdir into the jail root"))?;
    // pivot_root(".", ".") stacks the old root on top of the new one at "/";
    // unmounting "." then removes it, with no put_old directory in the jail.
    sys::pivot_root(Path::new("."), Path::new(".")).map_err(step("pivot_root"))?;
    sys::umount2(Path::new("."), libc::MNT_DETACH).map_err(step("unmount the old root"))?;
    std::env::set_current_dir("/").map_err(step("chdir to the new /"))?;
    Ok(())
}

/// Removes the jail directory of an id (for `--cleanup`).
pub fn remove(paths: &JailPaths) -> Result<bool, ChrootError> {
    match fs::remove_dir_all(&paths.jail_dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(ChrootError::Remove {
            path: paths.jail_dir.clone(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_firecracker() {
        let p = JailPaths::new(Path::new("/srv/jailer"), "xenia", "vm-1");
        assert_eq!(p.jail_dir, PathBuf::from("/srv/jailer/xenia/vm-1"));
        assert_eq!(p.root, PathBuf::from("/srv/jailer/xenia/vm-1/root"));
        assert_eq!(
            p.exec_copy,
            PathBuf::from("/srv/jailer/xenia/vm-1/root/xenia")
        );
        assert_eq!(p.exec_in_jail(), PathBuf::from("/xenia"));
        assert_eq!(p.pid_file_in_jail(), PathBuf::from("/xenia.pid"));
    }

    fn elf(phdr_types: &[u32]) -> Vec<u8> {
        let mut v = vec![0u8; 64 + 56 * phdr_types.len()];
        v[..6].copy_from_slice(b"\x7fELF\x02\x01");
        v[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        v[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        v[0x38..0x3a].copy_from_slice(&(phdr_types.len() as u16).to_le_bytes());
        for (i, t) in phdr_types.iter().enumerate() {
            v[64 + 56 * i..68 + 56 * i].copy_from_slice(&t.to_le_bytes());
        }
        v
    }

    #[test]
    fn elf_interpreter_detection() {
        assert_eq!(elf_has_interpreter(&elf(&[6, 1, 1])), Some(false));
        assert_eq!(elf_has_interpreter(&elf(&[6, 3, 1])), Some(true));
        assert_eq!(elf_has_interpreter(b"#!/bin/sh\n"), None);
        // Program headers claimed beyond the bytes read: not trusted.
        let mut truncated = elf(&[1]);
        truncated[0x38..0x3a].copy_from_slice(&500u16.to_le_bytes());
        assert_eq!(elf_has_interpreter(&truncated), None);
        let mut huge = elf(&[1]);
        huge[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(elf_has_interpreter(&huge), None);
    }

    #[test]
    fn this_test_binary_is_detected_as_dynamic_or_static() {
        // The test binary is a real ELF; whichever it is, it must parse.
        let exe = std::env::current_exe().unwrap();
        match check_static_elf(&exe) {
            Ok(()) | Err(ChrootError::DynamicExec { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
}
