//! Every raw libc call of the jailer, each in a small wrapper.
//!
//! The wrappers take Rust types, pass only valid pointers (C strings that live
//! for the call, or null where the kernel documents null as allowed) and turn
//! `-1` into `io::Error::last_os_error()`. A wrapper is safe when no argument can
//! make it unsound; the few whose soundness depends on the state of the whole
//! process (which descriptors Rust objects own, how many threads run) are
//! `unsafe fn` with the caller's obligations in a `# Safety` section.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Converts a path to a C string; an interior NUL byte is an invalid-input error.
pub fn cstring(bytes: &OsStr) -> io::Result<CString> {
    CString::new(bytes.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "path or argument contains a NUL byte",
        )
    })
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn check_long(ret: libc::c_long) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

/// Creates a character device node `path` with `mode` (permission bits) and `major:minor`.
pub fn mknod_char(path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let c_path = cstring(path.as_os_str())?;
    let dev = libc::makedev(major, minor);
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call;
    // mknod only reads it.
    check(unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFCHR | mode, dev) })
}

/// Moves this process into new namespaces given by `flags` (`CLONE_NEW*`).
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes an integer flag set and no pointers.
    check(unsafe { libc::unshare(flags) })
}

/// Joins the namespace that `fd` refers to; `nstype` restricts which kind it may be.
pub fn setns(fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: setns takes a file descriptor and a flag; the kernel checks that
    // the fd is a namespace of that type. No memory is passed.
    check(unsafe { libc::setns(fd, nstype) })
}

/// `mount(2)` with no file system type and no data (bind mounts and propagation changes).
pub fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let c_source = source.map(|s| cstring(s.as_os_str())).transpose()?;
    let c_target = cstring(target.as_os_str())?;
    let source_ptr = c_source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: both strings are valid NUL-terminated C strings (or null for the
    // source, which mount accepts for propagation changes) that outlive the
    // call; fstype and data are null, which is allowed for bind and
    // propagation-only mounts.
    check(unsafe {
        libc::mount(
            source_ptr,
            c_target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    })
}

/// `umount2(2)`.
pub fn umount2(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let c_target = cstring(target.as_os_str())?;
    // SAFETY: c_target is a valid C string that outlives the call.
    check(unsafe { libc::umount2(c_target.as_ptr(), flags) })
}

/// `pivot_root(2)` (no libc wrapper exists, so through `syscall`).
pub fn pivot_root(new_root: &Path, put_old: &Path) -> io::Result<()> {
    let c_new = cstring(new_root.as_os_str())?;
    let c_old = cstring(put_old.as_os_str())?;
    // SAFETY: SYS_pivot_root takes two C string pointers, both valid and
    // NUL-terminated for the duration of the call.
    check_long(unsafe { libc::syscall(libc::SYS_pivot_root, c_new.as_ptr(), c_old.as_ptr()) })
}

/// Sets both the soft and the hard limit of `resource` to `value`.
pub fn setrlimit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `limit` is a valid rlimit struct on our stack; setrlimit only reads it.
    check(unsafe { libc::setrlimit(resource, &limit) })
}

/// Closes every file descriptor from `first` upwards.
///
/// # Safety
///
/// No live object may own a descriptor numbered `first` or higher (a `File`,
/// `OwnedFd`, socket, ...): it would go on using, and finally close, a number
/// that is free or already reused by something else. Call it before opening
/// anything.
pub unsafe fn close_fds_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range takes plain integers and touches no memory; that no
    // descriptor it closes is owned is the caller's obligation (see above).
    check_long(unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) })
}

/// Clears `FD_CLOEXEC` on `fd`, so the descriptor survives `execve`.
pub fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_SETFD with an integer argument; no memory is passed and an
    // invalid fd only yields EBADF.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })
}

/// Takes an exclusive, non-blocking `flock` on `fd`.
pub fn try_lock_exclusive(fd: RawFd) -> io::Result<()> {
    // SAFETY: flock takes an fd and flags; no memory is passed.
    check(unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) })
}

/// `dup2(2)`: makes `new` a copy of `old`, closing what `new` was first.
///
/// # Safety
///
/// Whatever owns `new` must tolerate the descriptor changing under it: either
/// nothing owns it, or its owner only uses it as "the process's stdin/stdout/
/// stderr" (as `std::io::stdout` does). Replacing a descriptor that a `File`
/// or `OwnedFd` owns would make that object read, write or close a different
/// file than the one it opened.
pub unsafe fn dup2(old: RawFd, new: RawFd) -> io::Result<()> {
    // SAFETY: dup2 takes two integers and touches no memory; the ownership of
    // `new` is the caller's obligation (see above).
    check(unsafe { libc::dup2(old, new) })
}

/// `setsid(2)`.
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() })
}

/// The result of [`fork`].
pub enum Forked {
    Parent { child: libc::pid_t },
    Child,
}

/// `fork(2)`.
///
/// # Safety
///
/// The calling process must have exactly one thread. The child is a copy with
/// only the calling thread in it: a lock (the allocator's, stdout's, ...) that
/// another thread held at the fork stays locked forever in the child, and any
/// Rust code the child runs afterwards could deadlock or see half-updated state.
pub unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: fork takes no arguments; the single-thread precondition that makes
    // running Rust code in the child sound is the caller's (see above).
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        child => Ok(Forked::Parent { child }),
    }
}

/// Sets `PR_SET_NO_NEW_PRIVS`: execve can no longer grant privileges (setuid bits, file caps).
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
}

/// Drops capability `cap` from the bounding set; `Ok(false)` when the kernel has no such capability.
pub fn drop_bounding_cap(cap: u32) -> io::Result<bool> {
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
    if ret == -1 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINVAL) {
            return Ok(false);
        }
        return Err(err);
    }
    Ok(true)
}

/// Empties the supplementary group list.
pub fn clear_groups() -> io::Result<()> {
    // SAFETY: a count of 0 with a null list is the documented way to clear
    // the groups; the kernel reads nothing through the pointer.
    check(unsafe { libc::setgroups(0, std::ptr::null()) })
}

/// Sets real, effective and saved group id to `gid`.
pub fn set_all_gids(gid: u32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresgid(gid, gid, gid) })
}

/// Sets real, effective and saved user id to `uid`; from root this also clears
/// the permitted and effective capability sets.
pub fn set_all_uids(uid: u32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresuid(uid, uid, uid) })
}

/// `execve(2)`: replaces this process; only returns on failure.
pub fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // SAFETY: path is a valid C string; argv_ptrs and envp_ptrs are
    // null-terminated arrays of pointers to C strings owned by `argv` and
    // `envp`, which outlive the call.
    unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
    io::Error::last_os_error()
}
