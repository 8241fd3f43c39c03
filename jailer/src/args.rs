//! Command line, compatible with Firecracker's jailer, and its validation.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// Where jails are built unless `--chroot-base-dir` says otherwise.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
/// The longest id accepted (as Firecracker).
pub const MAX_ID_LEN: usize = 64;

pub const USAGE: &str = "\
usage: xenia-jailer --id ID --exec-file PATH --uid UID --gid GID
                    [--chroot-base-dir DIR] (default /srv/jailer)
                    [--netns PATH]
                    [--cgroup-version 1|2] (default 1)
                    [--cgroup FILE=VALUE]... [--parent-cgroup PATH] (default: exec file name)
                    [--resource-limit fsize=N|no-file=N]... (default no-file=2048)
                    [--daemonize] [--new-pid-ns] [--userfaultfd]
                    [-- ARGS FOR THE EXEC FILE]
       xenia-jailer --cleanup --id ID --exec-file PATH [--chroot-base-dir DIR]
                    [--cgroup-version 1|2] [--parent-cgroup PATH]";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("unknown argument `{0}` (arguments for the exec file go after `--`)")]
    UnknownFlag(String),
    #[error("argument `{0}` is not valid UTF-8")]
    NotUtf8(String),
    #[error("flag `{0}` needs a value")]
    MissingValue(&'static str),
    #[error("flag `{0}` is given more than once")]
    Duplicate(&'static str),
    #[error("flag `{0}` is required")]
    Required(&'static str),
    #[error("invalid --id `{0}`: use 1 to {MAX_ID_LEN} characters from A-Z, a-z, 0-9 and `-`")]
    BadId(String),
    #[error("invalid --{flag} `{value}`: not a number in 0..4294967294")]
    BadIdNumber { flag: &'static str, value: String },
    #[error("refusing --{0} 0: the jailed process must not run as root")]
    RootId(&'static str),
    #[error("invalid --exec-file `{path}`: {reason}")]
    BadExecFile { path: PathBuf, reason: String },
    #[error("invalid --{flag} `{path}`: {reason}")]
    BadPath {
        flag: &'static str,
        path: PathBuf,
        reason: &'static str,
    },
    #[error("invalid --cgroup-version `{0}`: use 1 or 2")]
    BadCgroupVersion(String),
    #[error("invalid --cgroup `{spec}`: {reason}")]
    BadCgroup { spec: String, reason: &'static str },
    #[error("invalid --resource-limit `{spec}`: {reason}")]
    BadResourceLimit { spec: String, reason: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// One `--cgroup FILE=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSetting {
    pub file: String,
    pub value: String,
}

impl CgroupSetting {
    /// The controller the file belongs to: what precedes the first `.` (`cpuset.cpus` → `cpuset`).
    pub fn controller(&self) -> &str {
        self.file.split('.').next().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `fsize`: largest file the process may create, in bytes.
    FileSize,
    /// `no-file`: one more than the largest file descriptor number.
    OpenFiles,
}

/// Firecracker's default for `no-file`.
pub const DEFAULT_NO_FILE: u64 = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Build the jail and exec the file in it.
    Run,
    /// Remove the jail directory and cgroups of an id that is not running.
    Cleanup,
}

/// Validated arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerArgs {
    pub action: Action,
    pub id: String,
    pub exec_file: PathBuf,
    /// Last component of `exec_file`: names the jail folder, the copy and the default cgroup parent.
    pub exec_file_name: String,
    pub uid: u32,
    pub gid: u32,
    pub chroot_base: PathBuf,
    pub netns: Option<PathBuf>,
    pub cgroup_version: CgroupVersion,
    pub cgroups: Vec<CgroupSetting>,
    pub parent_cgroup: PathBuf,
    /// In command-line order, the default `no-file` first, so a given value wins.
    pub resource_limits: Vec<(Resource, u64)>,
    pub daemonize: bool,
    pub new_pid_ns: bool,
    pub userfaultfd: bool,
    pub exec_args: Vec<OsString>,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Jail(Box<JailerArgs>),
    Help,
    Version,
}

#[derive(Default)]
struct Raw {
    id: Option<String>,
    exec_file: Option<PathBuf>,
    uid: Option<String>,
    gid: Option<String>,
    chroot_base: Option<PathBuf>,
    netns: Option<PathBuf>,
    cgroup_version: Option<String>,
    cgroups: Vec<String>,
    parent_cgroup: Option<PathBuf>,
    resource_limits: Vec<String>,
    daemonize: bool,
    new_pid_ns: bool,
    userfaultfd: bool,
    cleanup: bool,
    exec_args: Vec<OsString>,
}

fn set_once<T>(slot: &mut Option<T>, flag: &'static str, value: T) -> Result<(), ArgsError> {
    if slot.replace(value).is_some() {
        return Err(ArgsError::Duplicate(flag));
    }
    Ok(())
}

fn set_flag(slot: &mut bool, flag: &'static str) -> Result<(), ArgsError> {
    if std::mem::replace(slot, true) {
        return Err(ArgsError::Duplicate(flag));
    }
    Ok(())
}

/// Parses and validates the arguments (without the program name).
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Parsed, ArgsError> {
    let mut raw = Raw::default();
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            raw.exec_args.extend(iter.by_ref());
            break;
        }
        let arg = arg
            .into_string()
            .map_err(|a| ArgsError::NotUtf8(a.to_string_lossy().into_owned()))?;
        // Both `--flag value` and `--flag=value` are accepted.
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |flag: &'static str| -> Result<String, ArgsError> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => iter
                    .next()
                    .ok_or(ArgsError::MissingValue(flag))?
                    .into_string()
                    .map_err(|a| ArgsError::NotUtf8(a.to_string_lossy().into_owned())),
            }
        };
        match name.as_str() {
            "--id" => set_once(&mut raw.id, "--id", value("--id")?)?,
            "--exec-file" => set_once(
                &mut raw.exec_file,
                "--exec-file",
                value("--exec-file")?.into(),
            )?,
            "--uid" => set_once(&mut raw.uid, "--uid", value("--uid")?)?,
            "--gid" => set_once(&mut raw.gid, "--gid", value("--gid")?)?,
            "--chroot-base-dir" => set_once(
                &mut raw.chroot_base,
                "--chroot-base-dir",
                value("--chroot-base-dir")?.into(),
            )?,
            "--netns" => set_once(&mut raw.netns, "--netns", value("--netns")?.into())?,
            "--cgroup-version" => set_once(
                &mut raw.cgroup_version,
                "--cgroup-version",
                value("--cgroup-version")?,
            )?,
            "--cgroup" => raw.cgroups.push(value("--cgroup")?),
            "--parent-cgroup" => set_once(
                &mut raw.parent_cgroup,
                "--parent-cgroup",
                value("--parent-cgroup")?.into(),
            )?,
            "--resource-limit" => raw.resource_limits.push(value("--resource-limit")?),
            "--daemonize" if inline.is_none() => set_flag(&mut raw.daemonize, "--daemonize")?,
            "--new-pid-ns" if inline.is_none() => set_flag(&mut raw.new_pid_ns, "--new-pid-ns")?,
            "--userfaultfd" if inline.is_none() => set_flag(&mut raw.userfaultfd, "--userfaultfd")?,
            "--cleanup" if inline.is_none() => set_flag(&mut raw.cleanup, "--cleanup")?,
            "--help" | "-h" => return Ok(Parsed::Help),
            "--version" => return Ok(Parsed::Version),
            _ => return Err(ArgsError::UnknownFlag(arg)),
        }
    }
    validate(raw).map(|a| Parsed::Jail(Box::new(a)))
}

fn validate(raw: Raw) -> Result<JailerArgs, ArgsError> {
    let action = if raw.cleanup {
        Action::Cleanup
    } else {
        Action::Run
    };
    let id = raw.id.ok_or(ArgsError::Required("--id"))?;
    validate_id(&id)?;
    let exec_file = raw.exec_file.ok_or(ArgsError::Required("--exec-file"))?;
    let exec_file_name = exec_file_name(&exec_file)?;
    let (uid, gid) = match action {
        Action::Run => {
            validate_exec_file(&exec_file)?;
            let uid = parse_id_number("uid", raw.uid.ok_or(ArgsError::Required("--uid"))?)?;
            let gid = parse_id_number("gid", raw.gid.ok_or(ArgsError::Required("--gid"))?)?;
            (uid, gid)
        }
        // Removing a jail needs neither the ids nor the exec file itself, only its name.
        Action::Cleanup => (0, 0),
    };
    let chroot_base = raw
        .chroot_base
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CHROOT_BASE));
    validate_absolute("chroot-base-dir", &chroot_base)?;
    if let Some(netns) = &raw.netns {
        validate_absolute("netns", netns)?;
    }
    let cgroup_version = match raw.cgroup_version.as_deref() {
        None | Some("1") => CgroupVersion::V1,
        Some("2") => CgroupVersion::V2,
        Some(other) => return Err(ArgsError::BadCgroupVersion(other.to_string())),
    };
    let cgroups = raw
        .cgroups
        .iter()
        .map(|s| parse_cgroup(s))
        .collect::<Result<Vec<_>, _>>()?;
    let parent_cgroup = raw
        .parent_cgroup
        .unwrap_or_else(|| PathBuf::from(&exec_file_name));
    validate_relative("parent-cgroup", &parent_cgroup)?;
    let mut resource_limits = vec![(Resource::OpenFiles, DEFAULT_NO_FILE)];
    for spec in &raw.resource_limits {
        resource_limits.push(parse_resource_limit(spec)?);
    }
    Ok(JailerArgs {
        action,
        id,
        exec_file,
        exec_file_name,
        uid,
        gid,
        chroot_base,
        netns: raw.netns,
        cgroup_version,
        cgroups,
        parent_cgroup,
        resource_limits,
        daemonize: raw.daemonize,
        new_pid_ns: raw.new_pid_ns,
        userfaultfd: raw.userfaultfd,
        exec_args: raw.exec_args,
    })
}

fn validate_id(id: &str) -> Result<(), ArgsError> {
    let ok = (1..=MAX_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ArgsError::BadId(id.to_string()))
    }
}

fn parse_id_number(flag: &'static str, value: String) -> Result<u32, ArgsError> {
    let n: u32 = value.parse().map_err(|_| ArgsError::BadIdNumber {
        flag,
        value: value.clone(),
    })?;
    // (uid_t)-1 means "leave unchanged" to setresuid: never a real id.
    if n == u32::MAX {
        return Err(ArgsError::BadIdNumber { flag, value });
    }
    if n == 0 {
        return Err(ArgsError::RootId(flag));
    }
    Ok(n)
}

fn exec_file_name(path: &Path) -> Result<String, ArgsError> {
    let bad = |reason: &str| ArgsError::BadExecFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let name = path
        .file_name()
        .ok_or_else(|| bad("it has no file name"))?
        .to_str()
        .ok_or_else(|| bad("its file name is not valid UTF-8"))?;
    // The name becomes a directory under the chroot base and a cgroup name.
    if name.starts_with('.')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(bad(
            "its file name must use only A-Z, a-z, 0-9, `-`, `_`, `.` and not start with `.`",
        ));
    }
    Ok(name.to_string())
}

fn validate_exec_file(path: &Path) -> Result<(), ArgsError> {
    let meta = std::fs::metadata(path).map_err(|e| ArgsError::BadExecFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !meta.is_file() {
        return Err(ArgsError::BadExecFile {
            path: path.to_path_buf(),
            reason: "not a regular file".to_string(),
        });
    }
    Ok(())
}

fn validate_absolute(flag: &'static str, path: &Path) -> Result<(), ArgsError> {
    if !path.is_absolute() {
        return Err(ArgsError::BadPath {
            flag,
            path: path.to_path_buf(),
            reason: "must be an absolute path",
        });
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(ArgsError::BadPath {
            flag,
            path: path.to_path_buf(),
            reason: "must not contain `..`",
        });
    }
    Ok(())
}

fn validate_relative(flag: &'static str, path: &Path) -> Result<(), ArgsError> {
    let bad = |reason| ArgsError::BadPath {
        flag,
        path: path.to_path_buf(),
        reason,
    };
    if path.as_os_str().is_empty() {
        return Err(bad("must not be empty"));
    }
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(bad(
            "must be a relative path without `.`, `..` or a leading `/`",
        ));
    }
    Ok(())
}

fn parse_cgroup(spec: &str) -> Result<CgroupSetting, ArgsError> {
    let bad = |reason| ArgsError::BadCgroup {
        spec: spec.to_string(),
        reason,
    };
    let (file, value) = spec
        .split_once('=')
        .ok_or_else(|| bad("expected FILE=VALUE"))?;
    if file.is_empty() || value.is_empty() {
        return Err(bad("expected FILE=VALUE with both parts non-empty"));
    }
    if file.contains('/') || file.contains("..") || file.contains('\0') {
        return Err(bad("the file name must not contain `/` or `..`"));
    }
    match file.split_once('.') {
        Some((controller, rest)) if !controller.is_empty() && !rest.is_empty() => {}
        _ => return Err(bad("the file name must be CONTROLLER.KEY, e.g. cpu.max")),
    }
    if value.contains('\n') || value.contains('\0') {
        return Err(bad("the value must be a single line"));
    }
    Ok(CgroupSetting {
        file: file.to_string(),
        value: value.to_string(),
    })
}

fn parse_resource_limit(spec: &str) -> Result<(Resource, u64), ArgsError> {
    let bad = |reason| ArgsError::BadResourceLimit {
        spec: spec.to_string(),
        reason,
    };
    let (name, value) = spec
        .split_once('=')
        .ok_or_else(|| bad("expected NAME=VALUE"))?;
    let resource = match name {
        "fsize" => Resource::FileSize,
        "no-file" => Resource::OpenFiles,
        _ => return Err(bad("unknown resource: use fsize or no-file")),
    };
    let value = value
        .parse::<u64>()
        .map_err(|_| bad("the value must be a non-negative integer"))?;
    Ok((resource, value))
}

#[cfg(test)]
#[path = "args_tests.rs"]
mod tests;
