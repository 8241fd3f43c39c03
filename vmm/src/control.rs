//! The VMM control loop on the main thread: epoll over the API's request eventfd, the
//! reset event, vCPU exits, SIGTERM/SIGINT, console input and the metrics timer.
//!
//! Before boot only the API, signals and the timer are watched; the VM's sources are added
//! when an `InstanceStart` (or the config file) has started it.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::register_signal_handler;
use vmm_sys_util::timerfd::TimerFd;

use crate::metrics::FLUSH_INTERVAL;
use crate::rpc::{serve_pending, ApiThread, Vmm};
use crate::usage;
use crate::vstate::vcpu::VcpuExitReason;

/// xenia's exit statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Guest reset through the i8042, guest power-off, or SIGTERM/SIGINT.
    Ok = 0,
    /// Bad command line or configuration, or the VM could not be started.
    StartError = 1,
    /// The guest crashed (triple fault) or KVM could not run it.
    GuestCrash = 2,
}

/// Errors of the loop itself (not of the guest).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot set up the control loop's epoll: {0}")]
    Epoll(std::io::Error),
    #[error("cannot create the signal eventfd: {0}")]
    SignalEvent(std::io::Error),
    #[error("cannot set up the metrics timer: {0}")]
    Timer(vmm_sys_util::errno::Error),
    #[error("cannot install the handler for signal {signal}: {source}")]
    SignalHandler {
        signal: i32,
        source: vmm_sys_util::errno::Error,
    },
}

/// What woke the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Token {
    Reset = 1,
    VcpuExit = 2,
    Signal = 3,
    Stdin = 4,
    /// The API thread's request eventfd.
    Api = 5,
    /// The periodic metrics flush.
    MetricsTimer = 6,
    /// The Uffd page-fault handler's connection (a restored VM's): hang-up means it died.
    UffdHandler = 7,
    /// The usage sampler (resident guest memory).
    UsageTimer = 8,
}

impl Token {
    fn from_u64(v: u64) -> Option<Self> {
        [
            Token::Reset,
            Token::VcpuExit,
            Token::Signal,
            Token::Stdin,
            Token::Api,
            Token::MetricsTimer,
            Token::UffdHandler,
            Token::UsageTimer,
        ]
        .into_iter()
        .find(|t| *t as u64 == v)
    }
}

/// The eventfd SIGTERM/SIGINT write to (-1 before the loop exists).
static SIGNAL_EVT_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn handle_exit_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let fd = SIGNAL_EVT_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` is a valid 8-byte buffer and `fd` an
        // eventfd kept open for the life of the process.
        unsafe { libc::write(fd, std::ptr::addr_of!(one).cast(), 8) };
    }
}

/// The loop and its sources.
pub struct ControlLoop {
    epoll: Epoll,
    vmm: Vmm,
    /// The running VM's reset and exit events are in the epoll set.
    vm_watched: bool,
    signal_evt: EventFd,
    stdin: Option<File>,
    metrics_timer: TimerFd,
    usage_timer: TimerFd,
    api: Option<ApiThread>,
    /// Why the loop ended, for the final usage record.
    exit_reason: &'static str,
}

impl std::fmt::Debug for ControlLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlLoop")
            .field("vmm", &self.vmm)
            .finish()
    }
}

/// Console input is forwarded when stdin is a terminal or a pipe (not a file or /dev/null).
fn forwardable_stdin() -> Option<File> {
    let fd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    let file = File::from(fd);
    let kind = file.metadata().ok()?.file_type();
    let is_tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
    (is_tty || kind.is_fifo() || kind.is_socket()).then_some(file)
}

impl ControlLoop {
    pub fn new(vmm: Vmm) -> Result<Self, ControlError> {
        let epoll = Epoll::new().map_err(ControlError::Epoll)?;
        let signal_evt = EventFd::new(EFD_NONBLOCK).map_err(ControlError::SignalEvent)?;
        SIGNAL_EVT_FD.store(signal_evt.as_raw_fd(), Ordering::Relaxed);
        for signal in [libc::SIGTERM, libc::SIGINT] {
            register_signal_handler(signal, handle_exit_signal)
                .map_err(|source| ControlError::SignalHandler { signal, source })?;
        }
        let mut metrics_timer = TimerFd::new().map_err(ControlError::Timer)?;
        metrics_timer
            .reset(FLUSH_INTERVAL, Some(FLUSH_INTERVAL))
            .map_err(ControlError::Timer)?;
        let mut usage_timer = TimerFd::new().map_err(ControlError::Timer)?;
        usage_timer
            .reset(usage::SAMPLE_INTERVAL, Some(usage::SAMPLE_INTERVAL))
            .map_err(ControlError::Timer)?;
        let mut this = Self {
            epoll,
            vmm,
            vm_watched: false,
            signal_evt,
            stdin: None,
            metrics_timer,
            usage_timer,
            api: None,
            exit_reason: "vmm-error",
        };
        this.watch(this.signal_evt.as_raw_fd(), Token::Signal)?;
        this.watch(this.metrics_timer.as_raw_fd(), Token::MetricsTimer)?;
        this.watch(this.usage_timer.as_raw_fd(), Token::UsageTimer)?;
        this.watch_vm()?;
        if let Some(stdin) = forwardable_stdin() {
            match this.watch(stdin.as_raw_fd(), Token::Stdin) {
                Ok(()) => this.stdin = Some(stdin),
                Err(e) => log::debug!("console input not forwarded: {e}"),
            }
        }
        Ok(this)
    }

    fn watch(&self, fd: RawFd, token: Token) -> Result<(), ControlError> {
        self.epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token as u64),
            )
            .map_err(ControlError::Epoll)
    }

    /// Adds the VM's events once it runs (at most once).
    fn watch_vm(&mut self) -> Result<(), ControlError> {
        if self.vm_watched {
            return Ok(());
        }
        let Some(vm) = self.vmm.vm() else {
            return Ok(());
        };
        let (reset, exit) = (
            vm.legacy.reset_evt.as_raw_fd(),
            vm.vcpu_exit_evt.as_raw_fd(),
        );
        self.watch(reset, Token::Reset)?;
        self.watch(exit, Token::VcpuExit)?;
        if let Some((stream, _)) = &vm.uffd {
            // Nothing is ever sent on it: readable or hung up both mean the handler is gone.
            self.epoll
                .ctl(
                    ControlOperation::Add,
                    stream.as_raw_fd(),
                    EpollEvent::new(
                        EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP,
                        Token::UffdHandler as u64,
                    ),
                )
                .map_err(ControlError::Epoll)?;
        }
        self.vm_watched = true;
        Ok(())
    }

    /// Boots the VM from the gathered resources (the `--config-file` path) and watches it.
    /// A failure writes the final metrics line (usage counters null: no VM existed, or the
    /// VMM thread could not finish starting it) before the caller exits.
    pub fn start_vm(&mut self) -> Result<(), String> {
        let started = self
            .vmm
            .start()
            .map_err(|e| e.to_string())
            .and_then(|()| self.watch_vm().map_err(|e| e.to_string()));
        if started.is_err() {
            self.vmm.flush_final_metrics("start-failed");
        }
        started
    }

    /// Serves the API thread's requests from now on.
    pub fn attach_api(&mut self, api: ApiThread) -> Result<(), ControlError> {
        self.watch(api.wake.as_raw_fd(), Token::Api)?;
        // The VMM thread's half of the first request, run once here (read-only): its code
        // pages are mapped before a client waits on them (the api thread warms its half).
        let _ = self.vmm.execute(crate::rpc::VmmAction::GetInstanceInfo);
        self.api = Some(api);
        Ok(())
    }

    /// Stops the API thread (removing its socket file); false if it did not stop in `timeout`.
    pub fn stop_api(&mut self, timeout: Duration) -> bool {
        self.api.take().is_none_or(|api| api.stop(timeout))
    }

    pub fn vmm(&mut self) -> &mut Vmm {
        &mut self.vmm
    }

    /// Runs until the VM ends or a signal stops the VMM; returns the process exit status.
    /// Metrics are flushed one last time on the way out, with the final usage record
    /// (every thread still exists: the vCPUs and the io thread are joined later, when the
    /// VM is dropped, and a vCPU that already ended left its last CPU time behind).
    pub fn run(&mut self) -> ExitCode {
        let code = self.run_loop();
        if let Some(vm) = self.vmm.vm() {
            crate::device_manager::block::write_back_drives(&vm.drives);
        }
        self.vmm.flush_final_metrics(self.exit_reason);
        code
    }

    fn run_loop(&mut self) -> ExitCode {
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    log::error!("control loop: epoll_wait failed: {e}");
                    return ExitCode::GuestCrash;
                }
            };
            for event in &events[..n] {
                let Some(token) = Token::from_u64(event.data()) else {
                    continue;
                };
                if let Some(code) = self.dispatch(token) {
                    return code;
                }
            }
        }
    }

    fn dispatch(&mut self, token: Token) -> Option<ExitCode> {
        match token {
            Token::Reset => {
                let _ = self.vmm.vm()?.legacy.reset_evt.read();
                self.exit_reason = "guest-reset-or-poweroff";
                log::info!("the guest reset (i8042) or powered off (ACPI) the machine; exiting");
                Some(ExitCode::Ok)
            }
            Token::VcpuExit => {
                let _ = self.vmm.vm()?.vcpu_exit_evt.read();
                self.vcpu_exited()
            }
            Token::Signal => {
                let _ = self.signal_evt.read();
                self.exit_reason = "signal";
                log::info!("received SIGTERM or SIGINT; shutting down");
                Some(ExitCode::Ok)
            }
            Token::Stdin => {
                self.forward_stdin();
                None
            }
            Token::Api => self.serve_api(),
            Token::UffdHandler => {
                log::error!(
                    "the Uffd page-fault handler closed its connection: guest pages not yet \
                     faulted in can no longer be served and a vCPU touching one would hang; \
                     stopping the VM"
                );
                // A vCPU blocked on a fault nobody will serve cannot be joined.
                self.vmm.abandon_vm();
                Some(ExitCode::GuestCrash)
            }
            Token::MetricsTimer => {
                let _ = self.metrics_timer.wait();
                self.vmm.flush_metrics_if_configured();
                None
            }
            Token::UsageTimer => {
                let _ = self.usage_timer.wait();
                self.vmm.sample_usage();
                None
            }
        }
    }

    fn serve_api(&mut self) -> Option<ExitCode> {
        let api = self.api.as_ref()?;
        let _ = api.wake.read();
        let vmm = &mut self.vmm;
        serve_pending(&api.requests, |action| vmm.execute(action));
        if let Some(why) = self.vmm.fatal() {
            log::error!("{why}");
            self.exit_reason = "fatal-error";
            return Some(ExitCode::StartError);
        }
        // An InstanceStart may have started the VM: its events join the loop now.
        if let Err(e) = self.watch_vm() {
            log::error!("{e}");
            self.exit_reason = "fatal-error";
            return Some(ExitCode::StartError);
        }
        None
    }

    fn vcpu_exited(&mut self) -> Option<ExitCode> {
        // The first vCPU that stops ends the VM.
        let (index, reason) = self.vmm.vm()?.vcpu_exits.try_recv().ok()?;
        let code = match reason {
            VcpuExitReason::GuestShutdown | VcpuExitReason::Halted | VcpuExitReason::Stopped => {
                ExitCode::Ok
            }
            VcpuExitReason::TripleFault | VcpuExitReason::Crash(_) => ExitCode::GuestCrash,
        };
        self.exit_reason = match code {
            ExitCode::Ok => "guest-shutdown",
            _ => "guest-crash",
        };
        log::info!(
            "vCPU {index} stopped ({reason:?}); exiting with status {}",
            code as i32
        );
        Some(code)
    }

    fn forward_stdin(&mut self) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        let mut buf = [0u8; 256];
        match stdin.read(&mut buf) {
            Ok(0) | Err(_) => {
                // EOF or a broken input: stop watching it, the guest keeps running.
                if let Err(e) = self.epoll.ctl(
                    ControlOperation::Delete,
                    stdin.as_raw_fd(),
                    EpollEvent::default(),
                ) {
                    log::debug!("cannot stop watching stdin: {e}");
                }
                self.stdin = None;
            }
            Ok(n) => {
                let Some(vm) = self.vmm.vm() else {
                    log::debug!("console input before boot: dropped {n} bytes");
                    return;
                };
                let mut serial = vm.legacy.serial.lock().unwrap_or_else(|e| e.into_inner());
                let taken = serial.enqueue_input(&buf[..n]);
                crate::metrics::global().serial.bytes_in.add(taken as u64);
                if taken < n {
                    log::debug!("console input: dropped {} bytes", n - taken);
                }
            }
        }
    }
}
