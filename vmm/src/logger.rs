//! The `log` backend: Firecracker's line shape
//! `<timestamp> [<id>:<thread>(:<LEVEL>)(:<file>:<line>)] <message>`, to stderr or a file.
//!
//! [`configure`] may be called again later (the API's `PUT /logger`) to change the settings.
//!
//! A log file (often a FIFO) is written without blocking: a line it cannot take now is dropped
//! and counted in `logger.dropped_lines` (see `sink.rs`), so a stalled reader cannot stop the
//! thread that logs. Standard error, the default, is the launcher's and is left as it is.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::LogLevel;
use crate::sink::{open_nonblocking, LineOutcome, LineSink};

/// Instance id used when none is given.
pub const DEFAULT_INSTANCE_ID: &str = "anonymous-instance";

/// Errors while configuring the logger.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    #[error("--log-path: cannot open `{path}`: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot install the logger: {0}")]
    Install(log::SetLoggerError),
}

/// What the logger writes and where.
#[derive(Debug, Clone)]
pub struct LoggerSettings {
    pub instance_id: String,
    pub level: LogLevel,
    pub show_level: bool,
    pub show_origin: bool,
    /// `None`: stderr.
    pub log_path: Option<String>,
    /// Only records whose module path starts with this are written.
    pub module: Option<String>,
}

impl Default for LoggerSettings {
    fn default() -> Self {
        Self {
            instance_id: DEFAULT_INSTANCE_ID.to_owned(),
            level: LogLevel::Warning,
            show_level: false,
            show_origin: false,
            log_path: None,
            module: None,
        }
    }
}

/// Where log lines go.
enum Sink {
    Stderr,
    File(LineSink<File>),
}

impl Sink {
    /// Writes one line (with its newline); a line a full file sink cannot take is counted.
    fn write_line(&mut self, line: &str) {
        // A logger has nowhere to report its own failures.
        match self {
            Sink::Stderr => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
            Sink::File(file) => match file.write_line(line.as_bytes()) {
                Ok(LineOutcome::Written) => {}
                Ok(LineOutcome::Dropped) | Err(_) => {
                    crate::metrics::global().logger.dropped_lines.inc();
                }
            },
        }
    }
}

struct Inner {
    settings: LoggerSettings,
    sink: Sink,
}

struct Logger {
    inner: Mutex<Inner>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Installs the logger (first call) or changes its settings (later calls).
pub fn configure(settings: LoggerSettings) -> Result<(), LoggerError> {
    let sink = match &settings.log_path {
        Some(path) => Sink::File(LineSink::new(open_nonblocking(Path::new(path)).map_err(
            |source| LoggerError::Open {
                path: path.clone(),
                source,
            },
        )?)),
        None => Sink::Stderr,
    };
    let level = settings.level.to_filter();
    let mut fresh = Some(Inner { settings, sink });
    let logger = LOGGER.get_or_init(|| Logger {
        inner: Mutex::new(fresh.take().unwrap_or_else(|| Inner {
            settings: LoggerSettings::default(),
            sink: Sink::Stderr,
        })),
    });
    match fresh {
        // A logger existed already: swap in the new settings.
        Some(inner) => *logger.inner.lock().unwrap_or_else(|e| e.into_inner()) = inner,
        None => {
            if let Err(e) = log::set_logger(logger) {
                return Err(LoggerError::Install(e));
            }
        }
    }
    log::set_max_level(level);
    Ok(())
}

/// True unless a log file is configured (stderr is the default sink).
pub fn logs_to_stderr() -> bool {
    LOGGER.get().is_none_or(|l| {
        l.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .settings
            .log_path
            .is_none()
    })
}

fn level_name(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "ERROR",
        log::Level::Warn => "WARN",
        log::Level::Info => "INFO",
        log::Level::Debug => "DEBUG",
        log::Level::Trace => "TRACE",
    }
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn` (UTC) for `t`.
pub fn format_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// One log line (without the newline).
fn format_line(
    settings: &LoggerSettings,
    thread: &str,
    record: &log::Record<'_>,
    now: SystemTime,
) -> String {
    let mut prefix = format!("{}:{thread}", settings.instance_id);
    if settings.show_level {
        prefix.push(':');
        prefix.push_str(level_name(record.level()));
    }
    if settings.show_origin {
        let file = record.file().unwrap_or("?");
        let line = record
            .line()
            .map_or_else(|| "?".to_owned(), |l| l.to_string());
        prefix.push_str(&format!(":{file}:{line}"));
    }
    format!("{} [{prefix}] {}", format_timestamp(now), record.args())
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(module) = &inner.settings.module {
            if !record
                .module_path()
                .unwrap_or("")
                .starts_with(module.as_str())
            {
                return;
            }
        }
        let current = std::thread::current();
        let mut line = format_line(
            &inner.settings,
            current.name().unwrap_or("?"),
            record,
            SystemTime::now(),
        );
        line.push('\n');
        inner.sink.write_line(&line);
    }

    /// Nothing is buffered: every line goes out (or is dropped) as it is logged.
    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(
            format_timestamp(UNIX_EPOCH),
            "1970-01-01T00:00:00.000000000"
        );
        let t = UNIX_EPOCH + Duration::new(951_827_696, 5); // 2000-02-29T12:34:56
        assert_eq!(format_timestamp(t), "2000-02-29T12:34:56.000000005");
    }

    #[test]
    fn line_shape_follows_the_flags() {
        let mut s = LoggerSettings::default();
        let args = format_args!("hello");
        let record = log::Record::builder()
            .args(args)
            .level(log::Level::Warn)
            .file(Some("src/x.rs"))
            .line(Some(7))
            .build();
        let line = format_line(&s, "main", &record, UNIX_EPOCH);
        assert_eq!(
            line,
            "1970-01-01T00:00:00.000000000 [anonymous-instance:main] hello"
        );
        s.show_level = true;
        s.show_origin = true;
        s.instance_id = "vm1".into();
        let line = format_line(&s, "vcpu 0", &record, UNIX_EPOCH);
        assert!(
            line.ends_with("[vm1:vcpu 0:WARN:src/x.rs:7] hello"),
            "{line}"
        );
    }
}
