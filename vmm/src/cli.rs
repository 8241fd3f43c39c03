//! The `xenia` command line (hand-written: a dozen flags do not need a parser crate).

use crate::config::LogLevel;
use crate::logger::DEFAULT_INSTANCE_ID;

/// Usage text for `--help`.
pub const USAGE: &str = "\
Usage: xenia [OPTIONS]

  --config-file PATH   boot the VM described by this JSON file (Firecracker's schema)
  --no-api             do not start the API server (requires --config-file; --api-sock
                       is then ignored)
  --api-sock PATH      path of the API socket (default: /run/xenia.socket); with
                       --config-file the VM boots from the file and the API stays up
                       for runtime calls
  --http-api-max-payload-size BYTES
                       largest API request body accepted (default: 51200)
  --metrics-path PATH  append a JSON metrics line to PATH every 60 s, on FlushMetrics
                       and at exit
  --id ID              instance id shown in logs (default: anonymous-instance)
  --level LEVEL        log level: Error, Warning, Info, Debug, Trace or Off (default: Warning)
  --log-path PATH      write logs to this file instead of stderr
  --show-level         show the level in log lines
  --show-log-origin    show the source file and line in log lines
  --boot-timer         log the time from start to the guest's boot-timer write (port 0x3f0)
  --module MODULE      log only lines from modules whose path starts with MODULE
  --start-time-us US   when the launcher started, in microseconds of CLOCK_MONOTONIC: the
                       time to API readiness is reported as api_server.process_startup_time_us
  --start-time-cpu-us US
                       the launcher's process CPU time at that moment, in microseconds:
                       api_server.process_startup_time_cpu_us counts the CPU spent since
  --parent-cpu-time-us US
                       CPU time a forking launcher spent in its parent, in microseconds,
                       added to api_server.process_startup_time_cpu_us
  --mmds-size-limit BYTES
                       largest MMDS data store, as compact JSON (default: the API payload
                       limit); PUT/PATCH /mmds beyond it: 413
  --metadata FILE      initial MMDS data store contents (a JSON file)
  --enable-pci         refused: xenia has no PCI transport yet (virtio-mmio only)
  --seccomp-filter FILE
                       use the seccomp filters in FILE (JSON, the format of
                       resources/seccomp/x86_64.json, one filter each for vmm, api, vcpu
                       and io) instead of the built-in ones; a filter too narrow kills xenia
                       (exit status 148), one too wide weakens the sandbox
  --no-seccomp         run every thread without a seccomp filter: for debugging only, it
                       leaves the whole kernel interface open to a guest that escapes
  --version            print the version and exit
  --snapshot-version   print the snapshot state-file format version this xenia writes and
                       reads, and exit
  --describe-snapshot FILE
                       check a snapshot state file (header, checksum, every value) and
                       print what it holds as JSON, then exit (status 1 if it is refused)
  --help               print this help and exit

Exit status: 0 after a guest reset (i8042) or power-off, or SIGTERM/SIGINT; 1 for a bad
command line or configuration or a VM that could not start; 2 when the guest crashed
(triple fault, KVM internal error or entry failure); 148 when a thread made a system call
its seccomp filter forbids (the call is named on stderr).
";

/// The API socket used when neither `--api-sock` nor `--no-api` is given.
pub const DEFAULT_API_SOCK: &str = "/run/xenia.socket";
/// Default for `--http-api-max-payload-size` (Firecracker's).
pub const DEFAULT_MAX_PAYLOAD: usize = 51_200;

/// Errors on the command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("unknown argument `{0}` (see --help)")]
    Unknown(String),
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    #[error("{flag}: {reason}")]
    BadValue { flag: &'static str, reason: String },
    #[error("{0} was given twice")]
    Duplicate(&'static str),
    /// A Firecracker flag for a feature xenia does not have yet.
    #[error("{flag}: {reason}")]
    Unsupported {
        flag: &'static str,
        reason: &'static str,
    },
}

/// Parsed arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliArgs {
    pub config_file: Option<String>,
    pub no_api: bool,
    pub api_sock: Option<String>,
    pub max_payload: Option<usize>,
    pub metrics_path: Option<String>,
    pub id: String,
    pub level: Option<LogLevel>,
    pub log_path: Option<String>,
    pub show_level: bool,
    pub show_log_origin: bool,
    pub boot_timer: bool,
    /// Logger module filter (`--module`), over the config file's `logger.module`.
    pub module: Option<String>,
    /// `--start-time-us`: the launcher's start, microseconds of CLOCK_MONOTONIC.
    pub start_time_us: Option<u64>,
    /// `--start-time-cpu-us`: the launcher's process CPU time then, in microseconds.
    pub start_time_cpu_us: Option<u64>,
    /// `--parent-cpu-time-us`: CPU time of a forking launcher's parent, in microseconds.
    pub parent_cpu_time_us: Option<u64>,
    /// `--mmds-size-limit`: kept for the MMDS data store (see [`CliArgs::mmds_size_limit`]).
    pub mmds_size_limit: Option<usize>,
    /// `--metadata`: a file with the initial MMDS contents (refused until MMDS exists).
    pub metadata: Option<String>,
    /// `--enable-pci` (refused: no PCI transport).
    pub enable_pci: bool,
    pub seccomp_filter: Option<String>,
    pub no_seccomp: bool,
    pub version: bool,
    pub snapshot_version: bool,
    pub describe_snapshot: Option<String>,
    pub help: bool,
}

impl Default for CliArgs {
    fn default() -> Self {
        Self {
            config_file: None,
            no_api: false,
            api_sock: None,
            max_payload: None,
            metrics_path: None,
            id: DEFAULT_INSTANCE_ID.to_owned(),
            level: None,
            log_path: None,
            show_level: false,
            show_log_origin: false,
            boot_timer: false,
            module: None,
            start_time_us: None,
            start_time_cpu_us: None,
            parent_cpu_time_us: None,
            mmds_size_limit: None,
            metadata: None,
            enable_pci: false,
            seccomp_filter: None,
            no_seccomp: false,
            version: false,
            snapshot_version: false,
            describe_snapshot: None,
            help: false,
        }
    }
}

fn set_once<T>(slot: &mut Option<T>, flag: &'static str, value: T) -> Result<(), CliError> {
    if slot.is_some() {
        return Err(CliError::Duplicate(flag));
    }
    *slot = Some(value);
    Ok(())
}

/// A count of microseconds (any u64: a clock reading may be large, zero is valid).
fn micros(flag: &'static str, value: &str) -> Result<u64, CliError> {
    digits(value)
        .and_then(|_| value.parse::<u64>().ok())
        .ok_or_else(|| CliError::BadValue {
            flag,
            reason: format!("`{value}` is not a number of microseconds"),
        })
}

/// A positive number of bytes.
fn bytes(flag: &'static str, value: &str) -> Result<usize, CliError> {
    digits(value)
        .and_then(|_| value.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| CliError::BadValue {
            flag,
            reason: format!("`{value}` is not a positive number of bytes"),
        })
}

/// Only ASCII digits (Rust's parser would also take a leading `+`).
fn digits(value: &str) -> Option<()> {
    value.bytes().all(|b| b.is_ascii_digit()).then_some(())
}

fn non_empty(flag: &'static str, value: String) -> Result<String, CliError> {
    if value.is_empty() {
        return Err(CliError::BadValue {
            flag,
            reason: "must not be empty".into(),
        });
    }
    Ok(value)
}

/// Parses the arguments after the program name. `--flag=value` and `--flag value` both work.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<CliArgs, CliError> {
    let mut out = CliArgs::default();
    let mut id = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |flag: &'static str| -> Result<String, CliError> {
            let v = match inline.clone() {
                Some(v) => v,
                None => args.next().ok_or(CliError::MissingValue(flag))?,
            };
            non_empty(flag, v)
        };
        match name.as_str() {
            "--config-file" => set_once(
                &mut out.config_file,
                "--config-file",
                value("--config-file")?,
            )?,
            "--api-sock" => set_once(&mut out.api_sock, "--api-sock", value("--api-sock")?)?,
            "--id" => set_once(&mut id, "--id", value("--id")?)?,
            "--metrics-path" => set_once(
                &mut out.metrics_path,
                "--metrics-path",
                value("--metrics-path")?,
            )?,
            "--http-api-max-payload-size" => {
                const FLAG: &str = "--http-api-max-payload-size";
                let n = bytes(FLAG, &value(FLAG)?)?;
                set_once(&mut out.max_payload, FLAG, n)?;
            }
            "--mmds-size-limit" => {
                const FLAG: &str = "--mmds-size-limit";
                let n = bytes(FLAG, &value(FLAG)?)?;
                set_once(&mut out.mmds_size_limit, FLAG, n)?;
            }
            "--module" => set_once(&mut out.module, "--module", value("--module")?)?,
            "--metadata" => set_once(&mut out.metadata, "--metadata", value("--metadata")?)?,
            "--start-time-us" => {
                const FLAG: &str = "--start-time-us";
                let n = micros(FLAG, &value(FLAG)?)?;
                set_once(&mut out.start_time_us, FLAG, n)?;
            }
            "--start-time-cpu-us" => {
                const FLAG: &str = "--start-time-cpu-us";
                let n = micros(FLAG, &value(FLAG)?)?;
                set_once(&mut out.start_time_cpu_us, FLAG, n)?;
            }
            "--parent-cpu-time-us" => {
                const FLAG: &str = "--parent-cpu-time-us";
                let n = micros(FLAG, &value(FLAG)?)?;
                set_once(&mut out.parent_cpu_time_us, FLAG, n)?;
            }
            "--describe-snapshot" => set_once(
                &mut out.describe_snapshot,
                "--describe-snapshot",
                value("--describe-snapshot")?,
            )?,
            "--log-path" => set_once(&mut out.log_path, "--log-path", value("--log-path")?)?,
            "--seccomp-filter" => set_once(
                &mut out.seccomp_filter,
                "--seccomp-filter",
                value("--seccomp-filter")?,
            )?,
            "--level" => {
                let v = value("--level")?;
                let level = v.parse::<LogLevel>().map_err(|reason| CliError::BadValue {
                    flag: "--level",
                    reason,
                })?;
                set_once(&mut out.level, "--level", level)?;
            }
            flag @ ("--no-api" | "--show-level" | "--show-log-origin" | "--boot-timer"
            | "--no-seccomp" | "--enable-pci" | "--version" | "--snapshot-version"
            | "--help") => {
                if inline.is_some() {
                    return Err(CliError::Unknown(arg));
                }
                match flag {
                    "--no-api" => out.no_api = true,
                    "--show-level" => out.show_level = true,
                    "--show-log-origin" => out.show_log_origin = true,
                    "--boot-timer" => out.boot_timer = true,
                    "--no-seccomp" => out.no_seccomp = true,
                    "--enable-pci" => out.enable_pci = true,
                    "--version" => out.version = true,
                    "--snapshot-version" => out.snapshot_version = true,
                    _ => out.help = true,
                }
            }
            _ => return Err(CliError::Unknown(arg)),
        }
    }
    if let Some(id) = id {
        if id.len() > 64
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(CliError::BadValue {
                flag: "--id",
                reason: format!("`{id}` must be 1 to 64 ASCII letters, digits, `-` or `_`"),
            });
        }
        out.id = id;
    }
    Ok(out)
}

impl CliArgs {
    /// Refuses Firecracker flags whose feature xenia does not have yet, naming it.
    pub fn check_supported(&self) -> Result<(), CliError> {
        if self.enable_pci {
            return Err(CliError::Unsupported {
                flag: "--enable-pci",
                reason: "xenia has no PCI transport yet: its virtio devices are on virtio-mmio, \
                         so the flag cannot be honoured",
            });
        }
        Ok(())
    }

    /// The MMDS data store limit: `--mmds-size-limit`, else the API payload limit (as in
    /// Firecracker, so that a `PUT /mmds` the API accepts also fits the store).
    pub fn mmds_size_limit(&self) -> usize {
        self.mmds_size_limit
            .or(self.max_payload)
            .unwrap_or(DEFAULT_MAX_PAYLOAD)
    }

    /// The socket to serve the API on; `None` with `--no-api`.
    pub fn api_socket(&self) -> Option<&str> {
        if self.no_api {
            None
        } else {
            Some(self.api_sock.as_deref().unwrap_or(DEFAULT_API_SOCK))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<CliArgs, CliError> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults() {
        let a = p(&[]).unwrap();
        assert_eq!(a, CliArgs::default());
        assert_eq!(a.id, "anonymous-instance");
    }

    #[test]
    fn every_flag() {
        let a = p(&[
            "--config-file",
            "/c.json",
            "--api-sock=/s",
            "--metrics-path",
            "/m",
            "--http-api-max-payload-size=1024",
            "--id",
            "vm-1",
            "--level",
            "debug",
            "--log-path",
            "/l",
            "--show-level",
            "--show-log-origin",
            "--boot-timer",
        ])
        .unwrap();
        assert_eq!(a.config_file.as_deref(), Some("/c.json"));
        assert_eq!(a.api_sock.as_deref(), Some("/s"));
        assert_eq!(a.id, "vm-1");
        assert_eq!(a.level, Some(LogLevel::Debug));
        assert_eq!(a.log_path.as_deref(), Some("/l"));
        assert_eq!(a.metrics_path.as_deref(), Some("/m"));
        assert_eq!(a.max_payload, Some(1024));
        assert_eq!(a.api_socket(), Some("/s"));
        assert!(a.show_level && a.show_log_origin && a.boot_timer);
    }

    #[test]
    fn firecracker_launcher_flags() {
        let a = p(&[
            "--start-time-us",
            "123456789",
            "--start-time-cpu-us=42",
            "--parent-cpu-time-us",
            "0",
            "--module",
            "vmm::rpc",
            "--mmds-size-limit",
            "4096",
        ])
        .unwrap();
        assert_eq!(a.start_time_us, Some(123_456_789));
        assert_eq!(a.start_time_cpu_us, Some(42));
        assert_eq!(a.parent_cpu_time_us, Some(0));
        assert_eq!(a.module.as_deref(), Some("vmm::rpc"));
        assert_eq!(a.mmds_size_limit(), 4096);
        assert_eq!(a.check_supported(), Ok(()));
        for bad in ["-1", "+5", "1.5", "soon", "99999999999999999999999"] {
            assert!(
                matches!(
                    p(&["--start-time-us", bad]),
                    Err(CliError::BadValue {
                        flag: "--start-time-us",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        assert!(p(&["--mmds-size-limit", "0"]).is_err());
        assert!(p(&["--mmds-size-limit", "+9"]).is_err());
        assert_eq!(
            p(&["--parent-cpu-time-us", "1", "--parent-cpu-time-us", "2"]),
            Err(CliError::Duplicate("--parent-cpu-time-us"))
        );
    }

    #[test]
    fn mmds_size_limit_defaults_to_the_payload_limit() {
        assert_eq!(p(&[]).unwrap().mmds_size_limit(), DEFAULT_MAX_PAYLOAD);
        let a = p(&["--http-api-max-payload-size", "1000"]).unwrap();
        assert_eq!(a.mmds_size_limit(), 1000);
    }

    #[test]
    fn flags_for_missing_features_are_refused_by_name() {
        let a = p(&["--enable-pci"]).unwrap();
        let e = a.check_supported().unwrap_err().to_string();
        assert!(e.starts_with("--enable-pci: ") && e.contains("PCI"), "{e}");
        assert_eq!(
            p(&["--enable-pci=1"]),
            Err(CliError::Unknown("--enable-pci=1".into()))
        );
        let a = p(&["--metadata", "/m.json"]).unwrap();
        assert_eq!(a.metadata.as_deref(), Some("/m.json"));
        assert!(
            a.check_supported().is_ok(),
            "--metadata loads the MMDS data store"
        );
    }

    #[test]
    fn api_socket_defaults_and_no_api() {
        assert_eq!(p(&[]).unwrap().api_socket(), Some(DEFAULT_API_SOCK));
        assert_eq!(p(&["--no-api"]).unwrap().api_socket(), None);
        assert_eq!(
            p(&["--no-api", "--api-sock", "/s"]).unwrap().api_socket(),
            None
        );
        assert!(p(&["--http-api-max-payload-size", "0"]).is_err());
        assert!(p(&["--http-api-max-payload-size", "lots"]).is_err());
    }

    #[test]
    fn snapshot_flags() {
        assert!(p(&["--snapshot-version"]).unwrap().snapshot_version);
        assert!(p(&["--snapshot-version=1"]).is_err());
        let a = p(&["--describe-snapshot", "/s.state"]).unwrap();
        assert_eq!(a.describe_snapshot.as_deref(), Some("/s.state"));
        assert!(p(&["--describe-snapshot"]).is_err());
    }

    #[test]
    fn seccomp_flags() {
        let a = p(&["--seccomp-filter", "/f.json"]).unwrap();
        assert_eq!(a.seccomp_filter.as_deref(), Some("/f.json"));
        assert!(!a.no_seccomp);
        assert!(p(&["--no-seccomp"]).unwrap().no_seccomp);
        assert_eq!(
            p(&["--seccomp-filter"]),
            Err(CliError::MissingValue("--seccomp-filter"))
        );
        assert_eq!(
            p(&["--no-seccomp=yes"]),
            Err(CliError::Unknown("--no-seccomp=yes".into()))
        );
    }

    #[test]
    fn levels_use_firecracker_names_case_insensitively() {
        for (s, l) in [
            ("Error", LogLevel::Error),
            ("WARNING", LogLevel::Warning),
            ("info", LogLevel::Info),
            ("Trace", LogLevel::Trace),
            ("off", LogLevel::Off),
        ] {
            assert_eq!(p(&["--level", s]).unwrap().level, Some(l));
        }
        assert!(matches!(
            p(&["--level", "loud"]),
            Err(CliError::BadValue {
                flag: "--level",
                ..
            })
        ));
    }

    #[test]
    fn errors_name_the_flag() {
        assert_eq!(p(&["--bogus"]), Err(CliError::Unknown("--bogus".into())));
        assert_eq!(
            p(&["--config-file"]),
            Err(CliError::MissingValue("--config-file"))
        );
        assert_eq!(
            p(&["--id", "a", "--id", "b"]),
            Err(CliError::Duplicate("--id"))
        );
        assert!(p(&["--id", "bad id"]).is_err());
        assert!(p(&["--config-file="]).is_err());
        assert_eq!(
            p(&["--no-api=1"]),
            Err(CliError::Unknown("--no-api=1".into()))
        );
        assert_eq!(p(&["stray"]), Err(CliError::Unknown("stray".into())));
    }
}
