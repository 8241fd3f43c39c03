//! `xenia`: parse the command line, read the configuration, boot, run the control loop.

use std::process::ExitCode as ProcessExit;
use std::time::Instant;

use vmm::builder::{build_and_boot, BuildOptions};
use vmm::cli::{self, CliArgs, USAGE};
use vmm::config::VmConfig;
use vmm::control::{ControlLoop, ExitCode};
use vmm::logger::{self, LoggerSettings};
use vmm::seccomp::{self, SeccompLevel, ThreadKind};

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
        module: section.module,
    }
}

#[allow(clippy::print_stdout)]
fn run(start: Instant) -> ExitCode {
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => return fail(&e.to_string()),
    };
    if args.help {
        print!("{USAGE}");
        return ExitCode::Ok;
    }
    if args.version {
        println!("xenia v{}", env!("CARGO_PKG_VERSION"));
        return ExitCode::Ok;
    }
    // Log to stderr until the configuration says otherwise.
    if let Err(e) = logger::configure(logger_settings(&args, None)) {
        return fail(&e.to_string());
    }
    let Some(path) = &args.config_file else {
        if args.no_api {
            return fail("--no-api needs --config-file: nothing would configure the VM");
        }
        return fail("API not available yet: start xenia with --config-file PATH");
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return fail(&format!("--config-file: cannot read `{path}`: {e}")),
    };
    let config = match VmConfig::from_json(&text) {
        Ok(c) => c,
        Err(e) => return fail(&format!("--config-file `{path}`: {e}")),
    };
    if let Err(e) = logger::configure(logger_settings(&args, Some(&config))) {
        return fail(&e.to_string());
    }
    if args.api_sock.is_some() && !args.no_api {
        log::warn!(
            "--api-sock: the API server is not available yet; booting from --config-file only"
        );
    }
    // Before any thread starts: each thread installs its own filter as it begins.
    if let Err(e) = SeccompLevel::from_flags(args.no_seccomp, args.seccomp_filter.as_deref())
        .and_then(|level| seccomp::init(&level))
    {
        return fail(&e.to_string());
    }
    let options = BuildOptions {
        boot_timer: args.boot_timer.then_some(start),
    };
    let vm = match build_and_boot(&config, options) {
        Ok(vm) => vm,
        Err(e) => return fail(&e.to_string()),
    };
    let mut control = match ControlLoop::new(vm) {
        Ok(control) => control,
        Err(e) => return fail(&e.to_string()),
    };
    // Last: every other thread has started (they would inherit this filter) and the loop's
    // one-time set-up is done.
    if let Err(e) = seccomp::install(ThreadKind::Vmm) {
        return fail(&e.to_string());
    }
    let code = control.run();
    // vCPU threads may still be inside KVM_RUN: dropping the VM here would unmap guest
    // memory under them (KVM_RUN then fails with EFAULT, and a device thread touching
    // guest memory would fault). Process exit ends them instead.
    std::mem::forget(control);
    code
}

fn main() -> ProcessExit {
    let start = Instant::now();
    let code = run(start);
    log::logger().flush();
    // vCPU threads may still be inside KVM_RUN: leave through process exit, which ends them.
    std::process::exit(code as i32)
}
