//! Per-thread seccomp filters: one allow-list per thread kind (`vmm`, `api`, `vcpu`, `io`).
//!
//! The built-in filters come from `resources/seccomp/x86_64.json`, compiled to BPF by
//! `build.rs` and embedded in the binary; `--seccomp-filter FILE` replaces them with a JSON
//! file in the same format, compiled at start-up; `--no-seccomp` disables them.
//!
//! How the pieces are used:
//! 1. `main` builds a [`SeccompLevel`] from the flags and calls [`init`] once, before any
//!    thread that needs a filter starts. `init` compiles a custom file and installs the SIGSYS
//!    handler that reports a violation.
//! 2. Each thread calls [`install`] with its [`ThreadKind`] as the first thing it does, before
//!    it touches guest input. The filter applies to the calling thread only (no TSYNC).
//! 3. The main (VMM) thread installs its own filter last: after it has started every other
//!    thread (a thread inherits its creator's filter, and filters stack) and after its one-time
//!    set-up, just before its control loop.
//!
//! A forbidden system call raises SIGSYS (`SECCOMP_RET_TRAP`); the handler names the call on
//! stderr and ends the process with [`SECCOMP_VIOLATION_EXIT_CODE`].

mod builtin;
mod sigsys;
mod syscall_names;
#[cfg(feature = "seccomp-test-trigger")]
mod trigger;

#[cfg(test)]
mod bpf_eval;
#[cfg(test)]
mod reviewed;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use seccompiler::BpfProgram;

pub use sigsys::SECCOMP_VIOLATION_EXIT_CODE;

/// The kinds of xenia threads; each has its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The main thread: the VMM control loop.
    Vmm,
    /// The API server thread.
    Api,
    /// A `vcpu N` thread.
    Vcpu,
    /// The `io` thread (virtio device backends).
    Io,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 4] = [
        ThreadKind::Vmm,
        ThreadKind::Api,
        ThreadKind::Vcpu,
        ThreadKind::Io,
    ];

    /// The filter's key in the JSON file.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Api => "api",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Io => "io",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ThreadKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ThreadKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown thread kind `{s}` (expected vmm, api, vcpu or io)"))
    }
}

/// Which filters to use, from the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SeccompLevel {
    /// The built-in filters.
    #[default]
    Default,
    /// `--seccomp-filter FILE`: filters compiled from this JSON file at start-up.
    Custom(PathBuf),
    /// `--no-seccomp`: no filter at all (debugging only).
    Disabled,
}

impl SeccompLevel {
    /// The level the flags ask for; giving both flags is an error.
    pub fn from_flags(
        no_seccomp: bool,
        filter_file: Option<&str>,
    ) -> Result<SeccompLevel, SeccompError> {
        match (no_seccomp, filter_file) {
            (true, Some(_)) => Err(SeccompError::ConflictingFlags),
            (true, None) => Ok(SeccompLevel::Disabled),
            (false, Some(path)) => Ok(SeccompLevel::Custom(PathBuf::from(path))),
            (false, None) => Ok(SeccompLevel::Default),
        }
    }
}

/// Errors while preparing or installing filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("--seccomp-filter and --no-seccomp cannot be used together")]
    ConflictingFlags,
    #[error("--seccomp-filter: cannot read `{path}`: {source}")]
    ReadFilter {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--seccomp-filter `{path}`: not a valid filter file: {source}")]
    CompileFilter {
        path: PathBuf,
        source: seccompiler::Error,
    },
    #[error("--seccomp-filter `{path}`: no filter for thread kind `{kind}` (needs vmm, api, vcpu and io)")]
    MissingKind { path: PathBuf, kind: ThreadKind },
    #[error(
        "--seccomp-filter `{path}`: unknown thread kind `{name}` (expected vmm, api, vcpu or io)"
    )]
    UnknownKind { path: PathBuf, name: String },
    #[error("cannot install the SIGSYS handler: {0}")]
    SigsysHandler(vmm_sys_util::errno::Error),
    #[error("seccomp filters were already initialised")]
    AlreadyInitialized,
    #[error("seccomp::install({0}) called before seccomp::init")]
    NotInitialized(ThreadKind),
    #[error("cannot install the seccomp filter of the `{kind}` thread: {source}")]
    Install {
        kind: ThreadKind,
        source: seccompiler::Error,
    },
    #[error("XENIA_SECCOMP_TEST_TRIGGER: {0}")]
    BadTrigger(String),
}

/// The filters of every thread kind, ready to install.
#[derive(Debug, Clone)]
pub struct SeccompFilters {
    /// Indexed by [`ThreadKind::index`]; `None` with `--no-seccomp`.
    programs: Option<Arc<[BpfProgram; 4]>>,
    #[cfg(feature = "seccomp-test-trigger")]
    trigger: Option<trigger::Trigger>,
}

impl SeccompFilters {
    /// Prepares the filters `level` asks for; compiles a custom file now, so that a bad file
    /// is reported at start-up.
    pub fn new(level: &SeccompLevel) -> Result<SeccompFilters, SeccompError> {
        let programs = match level {
            SeccompLevel::Default => Some(ThreadKind::ALL.map(|k| builtin::program(k).to_vec())),
            SeccompLevel::Custom(path) => Some(compile_file(path)?),
            SeccompLevel::Disabled => None,
        };
        Ok(SeccompFilters {
            programs: programs.map(Arc::new),
            #[cfg(feature = "seccomp-test-trigger")]
            trigger: trigger::Trigger::from_env()?,
        })
    }

    /// Whether filters are installed at all (false with `--no-seccomp`).
    pub fn enabled(&self) -> bool {
        self.programs.is_some()
    }

    /// The BPF program for `kind` (`None` with `--no-seccomp`).
    pub fn program(&self, kind: ThreadKind) -> Option<&[seccompiler::sock_filter]> {
        self.programs.as_ref().map(|p| p[kind.index()].as_slice())
    }

    /// Installs `kind`'s filter on the calling thread.
    pub fn install(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let Some(program) = self.program(kind) else {
            log::debug!("seccomp disabled: the `{kind}` thread runs unfiltered");
            return Ok(());
        };
        sigsys::set_thread_kind(kind);
        seccompiler::apply_filter(program)
            .map_err(|source| SeccompError::Install { kind, source })?;
        #[cfg(feature = "seccomp-test-trigger")]
        if let Some(t) = &self.trigger {
            t.fire_if(kind);
        }
        Ok(())
    }
}

fn compile_file(path: &Path) -> Result<[BpfProgram; 4], SeccompError> {
    let file = std::fs::File::open(path).map_err(|source| SeccompError::ReadFilter {
        path: path.to_owned(),
        source,
    })?;
    let mut map: HashMap<String, BpfProgram> = seccompiler::compile_from_json(
        std::io::BufReader::new(file),
        seccompiler::TargetArch::x86_64,
    )
    .map_err(|source| SeccompError::CompileFilter {
        path: path.to_owned(),
        source,
    })?;
    if let Some(name) = map.keys().find(|name| name.parse::<ThreadKind>().is_err()) {
        return Err(SeccompError::UnknownKind {
            path: path.to_owned(),
            name: name.clone(),
        });
    }
    let mut take = |kind: ThreadKind| {
        map.remove(kind.name())
            .ok_or_else(|| SeccompError::MissingKind {
                path: path.to_owned(),
                kind,
            })
    };
    Ok([
        take(ThreadKind::Vmm)?,
        take(ThreadKind::Api)?,
        take(ThreadKind::Vcpu)?,
        take(ThreadKind::Io)?,
    ])
}

static FILTERS: OnceLock<SeccompFilters> = OnceLock::new();

/// Prepares the filters for the whole process and installs the SIGSYS handler; call once
/// from `main`, before any filtered thread starts.
pub fn init(level: &SeccompLevel) -> Result<(), SeccompError> {
    let filters = SeccompFilters::new(level)?;
    if filters.enabled() {
        sigsys::register_handler()?;
    } else {
        log::warn!("--no-seccomp: every thread runs without a seccomp filter");
    }
    FILTERS
        .set(filters)
        .map_err(|_| SeccompError::AlreadyInitialized)
}

/// Installs `kind`'s filter on the calling thread: the first call of every thread entry point.
///
/// Without [`init`] this is an error, so a binary that forgets `init` cannot start a thread
/// unfiltered; only this crate's unit tests (which start vCPU threads on their own) run such
/// threads unfiltered.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    match FILTERS.get() {
        Some(filters) => filters.install(kind),
        None if cfg!(test) => Ok(()),
        None => Err(SeccompError::NotInitialized(kind)),
    }
}

/// The process-wide filters, once [`init`] ran.
pub fn filters() -> Option<&'static SeccompFilters> {
    FILTERS.get()
}
