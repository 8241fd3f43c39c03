//! `xenia`: parse the command line, read the configuration, serve the API, boot, run the
//! control loop.

use std::path::Path;
use std::process::ExitCode as ProcessExit;
use std::time::{Duration, Instant};

use api_socket::{ApiServer, ServerOptions};
use vmm::builder::{BootHooks, BuildOptions};
use vmm::cli::{self, CliArgs, DEFAULT_MAX_PAYLOAD, USAGE};
use vmm::config::{MetricsConfig, VmConfig};
use vmm::control::{ControlLoop, ExitCode};
use vmm::logger::{self, LoggerSettings};
use vmm::resources::VmResources;
use vmm::rpc::{ApiThread, ThreadStartHook, Vmm};
use vmm::seccomp::{self, SeccompLevel, ThreadKind};

/// How long shutdown waits for the API thread to close its socket.
const API_STOP_TIMEOUT: Duration = Duration::from_secs(2);

#[allow(clippy::print_stderr)]
fn fail(message: &str) -> ExitCode {
    eprintln!("xenia: {message}");
    if !logger::logs_to_stderr() {
        log::error!("{message}");
    }
    ExitCode::StartError
}

fn logger_settings(args: &CliArgs, config: Option<&VmConfig>) -> LoggerSettings {
    let section = config.and_then(|c| c.logger.clone()).unwrap_or_default();
    LoggerSettings {
        instance_id: args.id.clone(),
        level: args.level.or(section.level).unwrap_or_default(),
        show_level: args.show_level || section.show_level.unwrap_or(false),
        show_origin: args.show_log_origin || section.show_log_origin.unwrap_or(false),
        log_path: args.log_path.clone().or(section.log_path),
        module: args.module.clone().or(section.module),
    }
}

fn read_config(path: &str) -> Result<VmConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--config-file: cannot read `{path}`: {e}"))?;
    VmConfig::from_json(&text).map_err(|e| format!("--config-file `{path}`: {e}"))
}

/// A hook that installs `kind`'s seccomp filter on the thread that runs it.
fn filter_hook(kind: ThreadKind) -> ThreadStartHook {
    Box::new(move || seccomp::install(kind).map_err(|e| e.to_string()))
}

/// Hooks for the threads the builder starts (the `io` thread's filter).
fn boot_hooks() -> BootHooks {
    BootHooks {
        io_thread: Some(filter_hook(ThreadKind::Io)),
    }
}

/// Sets up the VMM; returns the control loop ready to run, or a start-up error message.
fn prepare(args: &CliArgs, start: Instant) -> Result<ControlLoop, String> {
    let config = match &args.config_file {
        Some(path) => Some(read_config(path)?),
        None => None,
    };
    vmm::boot_phases::mark("config");
    let settings = logger_settings(args, config.as_ref());
    logger::configure(settings.clone()).map_err(|e| e.to_string())?;

    // Bind first: a socket already in use must fail before anything boots.
    let server = match args.api_socket() {
        Some(path) => {
            let options = ServerOptions {
                max_payload: args.max_payload.unwrap_or(DEFAULT_MAX_PAYLOAD),
                ..ServerOptions::default()
            };
            Some(ApiServer::bind(Path::new(path), options).map_err(|e| e.to_string())?)
        }
        None => None,
    };

    let file_metrics = config.as_ref().and_then(|c| c.metrics.clone());
    let resources = config.map(VmResources::from_config).unwrap_or_default();
    let options = BuildOptions {
        boot_timer: args.boot_timer.then_some(start),
        mmds: None,
    };
    let mut vmm = Vmm::new(args.id.clone(), resources, options, settings);
    vmm.set_mmds_limit(args.mmds_size_limit());
    if let Some(path) = &args.metadata {
        vmm.load_metadata_file(path)?;
    }
    vmm.set_boot_hooks(Box::new(boot_hooks));
    // The VMM thread's filter goes on once the VM runs: building it needs calls (KVM set-up,
    // thread creation, opening images) that the running VMM never makes again. Every other
    // thread exists by then, so none inherits it.
    vmm.set_after_start(filter_hook(ThreadKind::Vmm));
    let metrics = match (&args.metrics_path, file_metrics) {
        (Some(path), _) => Some(MetricsConfig {
            metrics_path: path.clone(),
            emit_id: None,
            properties: None,
        }),
        (None, from_file) => from_file,
    };
    if let Some(m) = metrics {
        vmm.open_metrics(m).map_err(|e| e.to_string())?;
    }
    let mut control = ControlLoop::new(vmm).map_err(|e| e.to_string())?;
    if let Some(server) = server {
        log::info!("API server listening on {}", server.path().display());
        let api =
            ApiThread::spawn(server, filter_hook(ThreadKind::Api)).map_err(|e| e.to_string())?;
        control.attach_api(api).map_err(|e| e.to_string())?;
    }
    // Ready to serve: how long it took since the launcher started us (when it said).
    vmm::metrics::global().startup.record(
        args.start_time_us,
        args.start_time_cpu_us,
        args.parent_cpu_time_us,
    );
    vmm::boot_phases::mark("vmm_ready");
    // Last: starting the VM installs the VMM thread's filter, which threads started after it
    // would inherit.
    if args.config_file.is_some() {
        control.start_vm().map_err(|e| e.to_string())?;
    }
    Ok(control)
}

/// Writes `text` to stdout; a reader that went away (EPIPE) is not an error worth a panic.
fn print_out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// `--describe-snapshot FILE`: the checked contents as JSON on stdout.
fn describe_snapshot(path: &str) -> ExitCode {
    let described = vmm::persist::restore::read_state_bytes(path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| vmm::persist::describe(&bytes));
    match described {
        Ok(v) => {
            print_out(&format!("{v:#}\n"));
            ExitCode::Ok
        }
        Err(e) => fail(&format!("{path}: {e}")),
    }
}

fn run(start: Instant) -> ExitCode {
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => return fail(&e.to_string()),
    };
    if args.help {
        print_out(USAGE);
        return ExitCode::Ok;
    }
    if args.version {
        print_out(&format!("xenia v{}\n", env!("CARGO_PKG_VERSION")));
        return ExitCode::Ok;
    }
    if args.snapshot_version {
        print_out(&format!("{}\n", vmm::persist::SNAPSHOT_FORMAT_VERSION));
        return ExitCode::Ok;
    }
    if let Some(path) = &args.describe_snapshot {
        return describe_snapshot(path);
    }
    // Log to stderr until the configuration says otherwise.
    if let Err(e) = logger::configure(logger_settings(&args, None)) {
        return fail(&e.to_string());
    }
    if let Err(e) = args.check_supported() {
        return fail(&e.to_string());
    }
    if args.no_api && args.config_file.is_none() {
        return fail("--no-api needs --config-file: nothing would configure the VM");
    }
    if args.no_api && args.api_sock.is_some() {
        log::warn!("--api-sock is ignored with --no-api");
    }
    // Before any thread starts: each thread installs its own filter as it begins.
    if let Err(e) = SeccompLevel::from_flags(args.no_seccomp, args.seccomp_filter.as_deref())
        .and_then(|level| seccomp::init(&level))
    {
        return fail(&e.to_string());
    }
    let mut control = match prepare(&args, start) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    // Every key, Ctrl-C included, goes to the guest while it runs; restored when `run` returns.
    let _terminal = vmm::console::RawTerminal::enable();
    let code = control.run();
    if !control.stop_api(API_STOP_TIMEOUT) {
        log::warn!("the API thread did not stop in {API_STOP_TIMEOUT:?}");
    }
    // Dropping the VM stops and joins its vCPU and io threads before it releases devices
    // and guest memory (see `RunningVm`), so this is an orderly shutdown.
    drop(control);
    code
}

fn main() -> ProcessExit {
    let start = Instant::now();
    vmm::boot_phases::mark("main");
    let code = run(start);
    log::logger().flush();
    std::process::exit(code as i32)
}
