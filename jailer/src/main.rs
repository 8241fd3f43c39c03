//! `xenia-jailer`: builds a jail for one VM and execs `xenia` inside it.
//!
//! The command line is Firecracker's jailer's, so tools that launch that one
//! can launch this one (see [`args::USAGE`]). In order, the jailer
//!
//! 1. validates every argument (id, paths, uid/gid ≠ 0, cgroup and rlimit
//!    specs) and refuses to run as non-root;
//! 2. closes every inherited descriptor above 2;
//! 3. creates `<chroot-base>/<exec-file-name>/<id>/` and locks
//!    `.xenia-jailer.lock` in it: a second start with the same id fails while
//!    the first process runs, because the jailed process inherits the lock (a
//!    read-only descriptor of that empty, root-owned file outside the jail);
//! 4. builds `root/` in it (mode 0700, owned by uid:gid) with a copy of the
//!    exec file (root-owned, 0555) and the device nodes `/dev/kvm`,
//!    `/dev/net/tun` (and `/dev/userfaultfd` with `--userfaultfd`), 0600,
//!    owned by uid:gid; the exec file must be statically linked;
//! 5. creates the cgroups `<parent-cgroup>/<id>` with the `--cgroup` limits;
//! 6. applies the rlimits, joins `--netns`, joins the cgroups;
//! 7. enters a new mount namespace whose root is the jail (`pivot_root`, the
//!    host tree unmounted);
//! 8. forks into a new PID namespace (`--new-pid-ns`) and/or daemonizes
//!    (`--daemonize`); when it forks, the parent writes the child's pid to
//!    `/<exec-file-name>.pid` inside the jail and exits 0;
//! 9. drops every privilege (empty bounding set and groups, setresgid,
//!    setresuid, no-new-privs) and execs `/<exec-file-name> --id ID
//!    --start-time-us T --start-time-cpu-us C --parent-cpu-time-us P ARGS...`
//!    (the launch's start times, see [`timing`]) with only
//!    `RUST_LOG`/`RUST_BACKTRACE` kept from the environment. Paths given to
//!    xenia after `--` are therefore relative to the jail root.
//!
//! A failure before step 7 removes what this start created. Whatever is left
//! behind (a jail whose process ended, or a failure after step 7) does not
//! break the next start with the same id: every step rebuilds in place.
//!
//! # Removing a jail
//!
//! `xenia-jailer --cleanup --id ID --exec-file PATH [--chroot-base-dir DIR]
//! [--parent-cgroup P]` removes `<chroot-base>/<exec-file-name>/<id>/` and the
//! cgroup `<parent-cgroup>/<id>` from every mounted hierarchy, and refuses
//! while the jailed process still runs. By hand: `rm -rf
//! /srv/jailer/<exec-file-name>/<id>` and `rmdir` of
//! `/sys/fs/cgroup/<hierarchy>/<parent-cgroup>/<id>`.

mod args;
mod cgroup;
mod chroot;
mod limits;
mod netns;
mod privileges;
mod sys;
mod timing;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use args::{Action, JailerArgs, Parsed};
use chroot::{JailPaths, Rollback};

#[derive(Debug, thiserror::Error)]
enum JailerError {
    #[error("{0}\n\n{usage}", usage = args::USAGE)]
    Args(#[from] args::ArgsError),
    #[error(
        "must run as root (effective uid is {0}): it creates device nodes, cgroups and namespaces"
    )]
    NotRoot(u32),
    #[error("close inherited file descriptors: {0}")]
    CloseFds(std::io::Error),
    #[error("building the jail: {0}")]
    Chroot(#[from] chroot::ChrootError),
    #[error("setting up cgroups: {0}")]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("applying resource limits: {0}")]
    Limits(#[from] limits::LimitsError),
    #[error("joining the network namespace: {0}")]
    Netns(#[from] netns::NetnsError),
    #[error("dropping privileges: {0}")]
    Privileges(#[from] privileges::PrivilegesError),
}

fn main() -> ExitCode {
    let times = timing::StartTimes::now();
    match run(std::env::args_os().skip(1).collect(), times) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "xenia-jailer: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(argv: Vec<OsString>, times: timing::StartTimes) -> Result<(), JailerError> {
    let args = match args::parse(argv)? {
        Parsed::Jail(a) => *a,
        Parsed::Help => {
            let _ = writeln!(std::io::stdout(), "{}", args::USAGE);
            return Ok(());
        }
        Parsed::Version => {
            let _ = writeln!(
                std::io::stdout(),
                "xenia-jailer {}",
                env!("CARGO_PKG_VERSION")
            );
            return Ok(());
        }
    };
    let euid = sys::effective_uid();
    if euid != 0 {
        return Err(JailerError::NotRoot(euid));
    }
    // Nothing the launcher left open may reach the jailed process.
    // SAFETY: nothing has been opened yet: the only objects alive are the parsed
    // arguments and stdio's handles (0..=2), so no Rust object owns a descriptor
    // >= 3.
    unsafe { sys::close_fds_from(3) }.map_err(JailerError::CloseFds)?;
    let paths = JailPaths::new(&args.chroot_base, &args.exec_file_name, &args.id);
    match args.action {
        Action::Cleanup => cleanup(&args, &paths),
        Action::Run => jail_and_exec(&args, &paths, times),
    }
}

fn cleanup(args: &JailerArgs, paths: &JailPaths) -> Result<(), JailerError> {
    if paths.jail_dir.exists() {
        // Holding the lock proves no jailed process of this id still runs.
        let _lock = chroot::lock(paths, &mut Rollback::default())?;
        chroot::remove(paths)?;
    }
    cgroup::remove(&args.parent_cgroup, &args.id)?;
    Ok(())
}

fn jail_and_exec(
    args: &JailerArgs,
    paths: &JailPaths,
    mut times: timing::StartTimes,
) -> Result<(), JailerError> {
    let mut rollback = Rollback::default();
    let prepared = prepare(args, paths, &mut rollback);
    let (lock, dev_null) = match prepared {
        Ok(v) => v,
        Err(e) => {
            rollback.undo();
            return Err(e);
        }
    };
    // From here the host's tree is out of reach: nothing to roll back, and a
    // leftover is rebuilt by the next start.
    let pid_file = paths.pid_file_in_jail();
    let mut forks = privileges::Forks::default();
    // Each step may fork; the child goes on (a changed pid says it did).
    let pid = std::process::id();
    let spent = times.cpu_spent();
    if args.new_pid_ns {
        privileges::enter_new_pid_ns(&pid_file, &mut forks)?;
    }
    if std::process::id() != pid {
        times.forked(spent);
    }
    let pid = std::process::id();
    let spent = times.cpu_spent();
    if args.daemonize {
        privileges::daemonize(&dev_null, &pid_file, &mut forks)?;
    }
    if std::process::id() != pid {
        times.forked(spent);
    }
    drop(dev_null);
    privileges::drop_all(args.uid, args.gid)?;
    let mut argv = vec![
        OsString::from(&args.exec_file_name),
        OsString::from("--id"),
        OsString::from(&args.id),
    ];
    argv.extend(times.args());
    argv.extend(args.exec_args.iter().cloned());
    Err(privileges::exec(&paths.exec_in_jail(), &argv, &lock).into())
}

/// Every step that can be undone: on error the caller runs `rollback`.
fn prepare(
    args: &JailerArgs,
    paths: &JailPaths,
    rollback: &mut Rollback,
) -> Result<(std::fs::File, std::fs::File), JailerError> {
    chroot::check_static_elf(&args.exec_file)?;
    let lock = chroot::lock(paths, rollback)?;
    let tenant = chroot::Tenant {
        exec_file: &args.exec_file,
        uid: args.uid,
        gid: args.gid,
        userfaultfd: args.userfaultfd,
    };
    chroot::build(paths, &tenant, rollback)?;
    let procs = cgroup::setup(
        args.cgroup_version,
        &args.parent_cgroup,
        &args.id,
        &args.cgroups,
        rollback,
    )?;
    limits::apply(&args.resource_limits)?;
    if let Some(netns) = &args.netns {
        netns::join(netns)?;
    }
    let dev_null = chroot::open_dev_null()?;
    cgroup::join(&procs)?;
    chroot::enter(&paths.root)?;
    Ok((lock, dev_null))
}
