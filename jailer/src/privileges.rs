//! The last steps before the exec: PID namespace, daemonizing, dropping every
//! privilege, and the exec itself.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::sys;

/// Environment variables passed through to the jailed process; the rest of the
/// jailer's environment (paths, tokens of whoever launched it) stays outside.
pub const KEPT_ENV: [&str; 2] = ["RUST_LOG", "RUST_BACKTRACE"];

#[derive(Debug, thiserror::Error)]
pub enum PrivilegesError {
    #[error("{step}: {source}")]
    Sys {
        step: &'static str,
        source: io::Error,
    },
    #[error("write pid file {path}: {source}")]
    PidFile {
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error("privileges were not dropped: the process could become root again")]
    StillPrivileged,
    #[error("exec {path} inside the jail: {source}")]
    Exec {
        path: std::path::PathBuf,
        source: io::Error,
    },
}

fn step(step: &'static str) -> impl Fn(io::Error) -> PrivilegesError {
    move |source| PrivilegesError::Sys { step, source }
}

/// Forks; the parent records the child's pid in `pid_file` and exits 0, as
/// Firecracker's jailer does; the child returns and carries on.
fn fork_and_detach(pid_file: &Path) -> Result<(), PrivilegesError> {
    // SAFETY: the jailer never starts a thread (it has no thread-spawning code and
    // links no library that does), so this thread is the only one.
    match unsafe { sys::fork() }.map_err(step("fork"))? {
        sys::Forked::Child => Ok(()),
        sys::Forked::Parent { child } => {
            std::fs::write(pid_file, format!("{child}\n")).map_err(|source| {
                PrivilegesError::PidFile {
                    path: pid_file.to_path_buf(),
                    source,
                }
            })?;
            std::process::exit(0)
        }
    }
}

/// What happened to the process tree before the exec.
#[derive(Debug, Default)]
pub struct Forks {
    forked: bool,
}

/// `--new-pid-ns`: the forked child is PID 1 of a new PID namespace.
pub fn enter_new_pid_ns(pid_file: &Path, forks: &mut Forks) -> Result<(), PrivilegesError> {
    sys::unshare(libc::CLONE_NEWPID).map_err(step("unshare the PID namespace"))?;
    fork_and_detach(pid_file)?;
    forks.forked = true;
    Ok(())
}

/// `--daemonize`: a new session, stdio on /dev/null.
pub fn daemonize(
    dev_null: &File,
    pid_file: &Path,
    forks: &mut Forks,
) -> Result<(), PrivilegesError> {
    if let Err(e) = sys::setsid() {
        // A process group leader cannot start a session: continue in a child.
        if e.raw_os_error() != Some(libc::EPERM) || forks.forked {
            return Err(step("setsid")(e));
        }
        fork_and_detach(pid_file)?;
        forks.forked = true;
        sys::setsid().map_err(step("setsid"))?;
    }
    for fd in 0..=2 {
        // SAFETY: descriptors 0..=2 are only ever used through `std::io`'s stdio
        // handles, which mean "descriptor N" and own nothing. No `File` of the
        // jailer can hold one of them: Rust's runtime opens /dev/null on any of
        // 0..=2 that is closed before `main`, so every file the jailer opens
        // (the lock, `dev_null`) gets a number >= 3.
        unsafe { sys::dup2(dev_null.as_raw_fd(), fd) }
            .map_err(step("redirect stdio to /dev/null"))?;
    }
    Ok(())
}

/// Leaves no way back to privilege: empty bounding set, no supplementary
/// groups, all ids the tenant's (which clears the capability sets), and
/// no-new-privs so the exec cannot grant any.
pub fn drop_all(uid: u32, gid: u32) -> Result<(), PrivilegesError> {
    let mut cap = 0;
    while sys::drop_bounding_cap(cap).map_err(step("drop the capability bounding set"))? {
        cap += 1;
    }
    sys::clear_groups().map_err(step("clear supplementary groups"))?;
    sys::set_all_gids(gid).map_err(step("setresgid"))?;
    sys::set_all_uids(uid).map_err(step("setresuid"))?;
    sys::set_no_new_privs().map_err(step("set no_new_privs"))?;
    if sys::set_all_uids(0).is_ok() {
        return Err(PrivilegesError::StillPrivileged);
    }
    Ok(())
}

/// Execs `path` (a path inside the jail) with `argv`; `keep_fd` (the jail lock)
/// stays open across the exec, every other descriptor is close-on-exec.
pub fn exec(path: &Path, argv: &[OsString], keep_fd: &File) -> PrivilegesError {
    let to_c = |s: &std::ffi::OsStr| sys::cstring(s);
    let result = (|| -> io::Result<io::Error> {
        let c_path = to_c(path.as_os_str())?;
        let c_argv = argv
            .iter()
            .map(|a| to_c(a))
            .collect::<io::Result<Vec<_>>>()?;
        let mut c_env = Vec::new();
        for name in KEPT_ENV {
            if let Some(value) = std::env::var_os(name) {
                let mut entry = OsString::from(format!("{name}="));
                entry.push(value);
                c_env.push(CString::new(entry.as_bytes()).map_err(io::Error::other)?);
            }
        }
        sys::clear_cloexec(keep_fd.as_raw_fd())?;
        Ok(sys::execve(&c_path, &c_argv, &c_env))
    })();
    let source = result.unwrap_or_else(|e| e);
    PrivilegesError::Exec {
        path: path.to_path_buf(),
        source,
    }
}
