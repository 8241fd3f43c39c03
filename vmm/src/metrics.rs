//! Metrics: counters kept by every part of the VMM, written as one JSON object per line.
//!
//! Hot paths only bump atomics. Whoever owns the sink (the VMM thread) serialises a snapshot
//! on a timer (every 60 s), on the `FlushMetrics` action and at exit. Devices register a
//! closure that returns their own counters as JSON, so this module knows no device types.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};

use crate::config::MetricsConfig;
use crate::sink::{open_nonblocking, LineOutcome, LineSink};

/// How often metrics are flushed without being asked.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot open metrics file {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("metrics are already configured")]
    AlreadyConfigured,
    #[error("cannot write metrics: {0}")]
    Write(std::io::Error),
}

/// The process's metrics: vCPU threads, devices, the API thread and the VMM thread all bump
/// the same counters.
pub fn global() -> &'static Metrics {
    static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::default);
    &GLOBAL
}

/// A monotonically increasing counter, cheap to bump from any thread.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Serialize for Counter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.get())
    }
}

/// The last value measured (e.g. a latency), readable from any thread.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Records `elapsed` in microseconds.
    pub fn set_duration(&self, elapsed: Duration) {
        self.set(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }
}

impl Serialize for Gauge {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.get())
    }
}

/// How long the last lifecycle operations took on the VMM thread, in microseconds
/// (Firecracker's `latencies_us` names).
#[derive(Debug, Default, Serialize)]
pub struct LatencyMetrics {
    pub full_create_snapshot: Gauge,
    pub diff_create_snapshot: Gauge,
    pub load_snapshot: Gauge,
    pub pause_vm: Gauge,
    pub resume_vm: Gauge,
}

/// Request count and latency for one API route.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct RouteStats {
    pub count: u64,
    pub errors: u64,
    pub total_us: u64,
    pub max_us: u64,
}

/// Exits taken by all vCPUs, by kind.
#[derive(Debug, Default, Serialize)]
pub struct VcpuMetrics {
    pub exit_io_in: Counter,
    pub exit_io_out: Counter,
    pub exit_mmio_read: Counter,
    pub exit_mmio_write: Counter,
    pub exit_hlt: Counter,
    pub exit_shutdown: Counter,
    pub exit_other: Counter,
    pub failures: Counter,
}

/// What the log and metrics sinks could not take (see `sink.rs`).
#[derive(Debug, Default, Serialize)]
pub struct LoggerMetrics {
    /// Log lines dropped because the log sink was full (a FIFO nobody reads).
    pub dropped_lines: Counter,
    /// Metrics lines dropped for the same reason.
    pub dropped_metrics: Counter,
}

#[derive(Debug, Default, Serialize)]
pub struct SerialMetrics {
    pub bytes_out: Counter,
    pub bytes_in: Counter,
    pub dropped_bytes: Counter,
}

/// Requests that used a deprecated field or path (Firecracker's names).
#[derive(Debug, Default, Serialize)]
pub struct DeprecatedApiMetrics {
    pub deprecated_http_api_calls: Counter,
}

/// How long the process took to get ready to serve, measured from the start times a launcher
/// passes (`--start-time-us`, `--start-time-cpu-us`, `--parent-cpu-time-us`); written under
/// `api_server` with Firecracker's names. 0 until known.
#[derive(Debug, Default)]
pub struct StartupMetrics {
    pub process_startup_time_us: AtomicU64,
    pub process_startup_time_cpu_us: AtomicU64,
}

impl StartupMetrics {
    /// Records the time from the launcher's start (`--start-time-us`, CLOCK_MONOTONIC) and
    /// the CPU time since its CPU reading (`--start-time-cpu-us`, plus `--parent-cpu-time-us`
    /// spent by a forking launcher's parent) to now. Call it once the VMM is ready to serve.
    /// A value the launcher did not pass is left at 0, as Firecracker does.
    pub fn record(
        &self,
        start_us: Option<u64>,
        start_cpu_us: Option<u64>,
        parent_cpu_us: Option<u64>,
    ) {
        let (wall, cpu) = startup_times(
            clock_us(libc::CLOCK_MONOTONIC),
            clock_us(libc::CLOCK_PROCESS_CPUTIME_ID),
            start_us,
            start_cpu_us,
            parent_cpu_us,
        );
        if let Some(us) = wall {
            self.process_startup_time_us.store(us, Ordering::Relaxed);
            log::info!("process startup time: {us} us");
        }
        if let Some(us) = cpu {
            self.process_startup_time_cpu_us
                .store(us, Ordering::Relaxed);
            log::info!("process startup CPU time: {us} us");
        }
    }
}

/// The startup times from clock readings (`now_us`, `now_cpu_us`) and the launcher's values.
/// A launcher time in the future (a clock mix-up) gives 0 rather than a huge number.
fn startup_times(
    now_us: Option<u64>,
    now_cpu_us: Option<u64>,
    start_us: Option<u64>,
    start_cpu_us: Option<u64>,
    parent_cpu_us: Option<u64>,
) -> (Option<u64>, Option<u64>) {
    let wall = start_us
        .zip(now_us)
        .map(|(start, now)| now.saturating_sub(start));
    let cpu = start_cpu_us.zip(now_cpu_us).map(|(start, now)| {
        now.saturating_sub(start)
            .saturating_add(parent_cpu_us.unwrap_or(0))
    });
    (wall, cpu)
}

/// A clock's reading in microseconds, or None if the clock cannot be read.
fn clock_us(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes one timespec, which lives on this stack frame.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    Some(secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000))
}

type DeviceSource = Box<dyn Fn() -> Value + Send + Sync>;

/// Every metric of one VMM process.
#[derive(Default)]
pub struct Metrics {
    pub vcpu: VcpuMetrics,
    pub serial: SerialMetrics,
    pub deprecated_api: DeprecatedApiMetrics,
    pub startup: StartupMetrics,
    pub latencies_us: LatencyMetrics,
    pub logger: LoggerMetrics,
    api: Mutex<BTreeMap<String, RouteStats>>,
    devices: Mutex<Vec<(String, DeviceSource)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("vcpu", &self.vcpu)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Records one API request on `route` (e.g. `PUT /drives`).
    pub fn record_api(&self, route: &str, elapsed: Duration, failed: bool) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let mut api = self.api.lock().unwrap_or_else(|e| e.into_inner());
        let s = api.entry(route.to_owned()).or_default();
        s.count += 1;
        s.errors += u64::from(failed);
        s.total_us = s.total_us.saturating_add(us);
        s.max_us = s.max_us.max(us);
    }

    /// Adds a device whose counters appear under `name` (e.g. `block_rootfs`).
    pub fn register_device(&self, name: impl Into<String>, source: DeviceSource) {
        let mut d = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        d.push((name.into(), source));
    }

    /// The whole metrics object as written on one line.
    pub fn snapshot(&self) -> Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let routes = self.api.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Route keys look like "GET /": they cannot collide with the two startup keys.
        let mut api = json!(routes);
        if let Value::Object(map) = &mut api {
            let startup = &self.startup;
            map.insert(
                "process_startup_time_us".into(),
                json!(startup.process_startup_time_us.load(Ordering::Relaxed)),
            );
            map.insert(
                "process_startup_time_cpu_us".into(),
                json!(startup.process_startup_time_cpu_us.load(Ordering::Relaxed)),
            );
        }
        let mut out = json!({
            "utc_timestamp_ms": u64::try_from(now.as_millis()).unwrap_or(u64::MAX),
            "api_server": api,
            "deprecated_api": &self.deprecated_api,
            "vcpu": &self.vcpu,
            "uart": &self.serial,
            "latencies_us": &self.latencies_us,
            "logger": &self.logger,
            "mmds": mmds::metrics::METRICS.snapshot(),
        });
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        if let Value::Object(map) = &mut out {
            for (name, source) in devices.iter() {
                map.insert(name.clone(), source());
            }
        }
        out
    }
}

/// Where metrics lines go, with the per-line extras from the configuration. Never blocks: a
/// line the destination cannot take now is dropped and counted in `logger.dropped_metrics`.
#[derive(Debug)]
pub struct MetricsSink {
    file: LineSink<File>,
    id: Option<String>,
    properties: Option<BTreeMap<String, String>>,
}

impl MetricsSink {
    /// Opens the metrics destination (a regular file is appended to; a FIFO is written to),
    /// non-blocking (see `sink.rs`).
    pub fn open(config: &MetricsConfig, instance_id: &str) -> Result<Self, MetricsError> {
        let file = open_nonblocking(Path::new(&config.metrics_path)).map_err(|source| {
            MetricsError::Open {
                path: config.metrics_path.clone(),
                source,
            }
        })?;
        Ok(MetricsSink {
            file: LineSink::new(file),
            id: config
                .emit_id
                .unwrap_or(false)
                .then(|| instance_id.to_owned()),
            properties: config.properties.clone(),
        })
    }

    /// Writes one line with the current values (or drops and counts it when the destination
    /// is full).
    pub fn flush(&mut self, metrics: &Metrics) -> Result<(), MetricsError> {
        self.flush_with_usage(metrics, None)
    }

    /// [`MetricsSink::flush`] with the VM's usage record as the line's `usage` object.
    pub fn flush_with_usage(
        &mut self,
        metrics: &Metrics,
        usage: Option<Value>,
    ) -> Result<(), MetricsError> {
        let mut line = metrics.snapshot();
        if let Value::Object(map) = &mut line {
            if let Some(u) = usage {
                map.insert("usage".into(), u);
            }
            if let Some(id) = &self.id {
                map.insert("id".into(), Value::String(id.clone()));
            }
            if let Some(p) = &self.properties {
                map.insert("properties".into(), json!(p));
            }
        }
        let mut text = line.to_string();
        text.push('\n');
        // Whole lines only, so that a reader of a FIFO never sees half a line.
        match self
            .file
            .write_line(text.as_bytes())
            .map_err(MetricsError::Write)?
        {
            LineOutcome::Written => {}
            LineOutcome::Dropped => metrics.logger.dropped_metrics.inc(),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_stats_accumulate_per_route() {
        let m = Metrics::default();
        m.record_api("GET /", Duration::from_micros(10), false);
        m.record_api("GET /", Duration::from_micros(30), true);
        m.record_api("PUT /drives", Duration::from_micros(5), false);
        let s = m.snapshot();
        assert_eq!(s["api_server"]["GET /"]["count"], 2);
        assert_eq!(s["api_server"]["GET /"]["errors"], 1);
        assert_eq!(s["api_server"]["GET /"]["max_us"], 30);
        assert_eq!(s["api_server"]["GET /"]["total_us"], 40);
        assert_eq!(s["api_server"]["PUT /drives"]["count"], 1);
    }

    #[test]
    fn devices_and_counters_appear_in_the_snapshot() {
        let m = Metrics::default();
        m.vcpu.exit_io_out.add(3);
        m.serial.bytes_out.add(12);
        m.register_device("block_root", Box::new(|| json!({"read_bytes": 4096})));
        let s = m.snapshot();
        assert_eq!(s["vcpu"]["exit_io_out"], 3);
        assert_eq!(s["uart"]["bytes_out"], 12);
        assert_eq!(s["block_root"]["read_bytes"], 4096);
    }

    #[test]
    fn sink_writes_one_json_object_per_line_with_extras() {
        let dir = std::env::temp_dir().join(format!("xenia-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.json");
        let cfg = MetricsConfig {
            metrics_path: path.to_string_lossy().into_owned(),
            emit_id: Some(true),
            properties: Some(BTreeMap::from([("az".to_string(), "eu-1".to_string())])),
        };
        let m = Metrics::default();
        let mut sink = MetricsSink::open(&cfg, "vm-7").unwrap();
        sink.flush(&m).unwrap();
        m.vcpu.exit_hlt.inc();
        sink.flush(&m).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["vcpu"]["exit_hlt"], 1);
        assert_eq!(lines[0]["id"], "vm-7");
        assert_eq!(lines[0]["properties"]["az"], "eu-1");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn startup_times_from_launcher_values() {
        assert_eq!(
            startup_times(Some(5_000), Some(900), Some(1_000), Some(100), Some(50)),
            (Some(4_000), Some(850))
        );
        assert_eq!(
            startup_times(Some(5_000), Some(900), None, None, Some(50)),
            (None, None)
        );
        // A start in the future (another clock) is clamped, not wrapped.
        assert_eq!(
            startup_times(Some(5), Some(5), Some(10), Some(10), None),
            (Some(0), Some(0))
        );
    }

    #[test]
    fn recorded_startup_times_appear_under_api_server() {
        let m = Metrics::default();
        let s = m.snapshot();
        assert_eq!(s["api_server"]["process_startup_time_us"], 0);
        let now = clock_us(libc::CLOCK_MONOTONIC).unwrap();
        let cpu = clock_us(libc::CLOCK_PROCESS_CPUTIME_ID).unwrap();
        m.startup
            .record(Some(now - 2_000_000), Some(cpu), Some(1_000_000));
        let s = m.snapshot();
        let wall = s["api_server"]["process_startup_time_us"].as_u64().unwrap();
        let cpu = s["api_server"]["process_startup_time_cpu_us"]
            .as_u64()
            .unwrap();
        assert!((2_000_000..60_000_000).contains(&wall), "{wall}");
        assert!((1_000_000..60_000_000).contains(&cpu), "{cpu}");
        assert_eq!(s["deprecated_api"]["deprecated_http_api_calls"], 0);
    }

    #[test]
    fn a_full_fifo_drops_and_counts_lines_instead_of_blocking() {
        let dir = std::env::temp_dir().join(format!("xenia-metrics-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.fifo");
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let cfg = MetricsConfig {
            metrics_path: path.to_string_lossy().into_owned(),
            emit_id: None,
            properties: None,
        };
        let m = Metrics::default();
        // Nobody reads: the open and every flush return at once.
        let mut sink = MetricsSink::open(&cfg, "x").unwrap();
        for _ in 0..1_000 {
            sink.flush(&m).unwrap();
        }
        assert!(m.logger.dropped_metrics.get() > 0);
        assert_eq!(
            m.snapshot()["logger"]["dropped_metrics"],
            m.logger.dropped_metrics.get()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn open_failure_names_the_path() {
        let cfg = MetricsConfig {
            metrics_path: "/nonexistent-dir/m".into(),
            emit_id: None,
            properties: None,
        };
        let e = MetricsSink::open(&cfg, "x").unwrap_err().to_string();
        assert!(e.contains("/nonexistent-dir/m"), "{e}");
    }
}
