//! vCPUs: configuration before boot and the `vcpu N` threads running KVM_RUN.
//!
//! A vCPU thread owns its `VcpuFd`. The VMM thread talks to it through [`VcpuHandle`]: a
//! message ([`VcpuEvent`]) plus a kick signal that makes a blocked KVM_RUN return. The signal
//! handler sets `immediate_exit` in the thread's `kvm_run`, so a kick that lands just before
//! KVM_RUN is entered is not lost: KVM returns EINTR at once and the thread reads its
//! messages. Exits that end the VM are reported through a [`VcpuExitSink`].
//!
//! Every Pause/Resume carries a sequence number that the answer repeats, so an answer that
//! arrives after its caller gave up waiting is recognised as stale and discarded by the next
//! caller instead of being taken for its own answer.
//!
//! Dropping a [`VcpuHandle`] stops the thread and joins it: nothing the thread uses (guest
//! memory, the devices on its buses) can go away while it may still run the guest.

use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::Bus;
use kvm_bindings::{
    kvm_run, CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use virtio::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use super::vcpu_state::{restore_vcpu, save_vcpu, VcpuPersistContext, VcpuState, VcpuStateError};
use super::vm::Vm;
use crate::arch::cpuid::{self, CpuidError, Topology};
use crate::arch::interrupts::{setup_lapic, LapicError};
use crate::arch::msr::{setup_msrs, MsrError};
use crate::arch::regs::{setup_boot_vcpu, EntryProtocol, RegsError};

/// Offset from SIGRTMIN of the signal that kicks a vCPU out of KVM_RUN.
const KICK_SIGNAL_OFFSET: i32 = 0;

/// Stack of a `vcpu N` thread. Measured: a boot, MMIO and port I/O to every device, pause,
/// resume and a snapshot save touch under 16 KiB in release and 40 KiB in a debug build
/// (glibc's TLS block and thread descriptor included; the kick signal runs on this stack).
/// 256 KiB instead of Rust's 2 MiB default: the mapping, not the memory, is what shrinks.
pub const VCPU_STACK_SIZE: usize = 256 << 10;

/// Errors while creating, configuring or talking to a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("KVM_CREATE_VCPU {index} failed: {source}")]
    Create {
        index: u8,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: KVM_SET_CPUID2 failed: {source}")]
    Cpuid {
        index: u8,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: {source}")]
    CpuidTable { index: u8, source: CpuidError },
    #[error("vCPU {index}: {source}")]
    Msrs { index: u8, source: MsrError },
    #[error("vCPU {index}: {source}")]
    Lapic { index: u8, source: LapicError },
    #[error("vCPU {index}: {source}")]
    Regs { index: u8, source: RegsError },
    #[error("cannot register the vCPU kick signal handler: {0}")]
    KickHandler(vmm_sys_util::errno::Error),
    #[error("cannot start the thread for vCPU {index}: {source}")]
    Spawn { index: u8, source: std::io::Error },
    #[error("vCPU {0} is gone (its thread has exited)")]
    Gone(u8),
    #[error("vCPU {0} did not answer in time")]
    NoResponse(u8),
    #[error("cannot clone the vCPU exit eventfd: {0}")]
    ExitEvent(std::io::Error),
    #[error(transparent)]
    State(#[from] VcpuStateError),
}

/// Why a vCPU stopped running the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuExitReason {
    /// The guest asked for a reset or power-off through KVM (KVM_SYSTEM_EVENT).
    GuestShutdown,
    /// The guest halted with interrupts that will never come (KVM_EXIT_HLT).
    Halted,
    /// Triple fault (KVM_EXIT_SHUTDOWN): the guest crashed.
    TripleFault,
    /// KVM could not run the guest (entry failure, internal error, unexpected exit).
    Crash(String),
    /// The VMM asked the vCPU to stop.
    Stopped,
}

/// Messages from the VMM thread to a vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuEvent {
    Pause,
    Resume,
    Stop,
    /// Report the vCPU's state (on the handle's state channel); sent while paused.
    SaveState,
}

/// Answers from a vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuResponse {
    Paused,
    Resumed,
}

/// A message to a vCPU thread with the sequence number its answer will carry.
type SeqEvent = (u64, VcpuEvent);
/// An answer with the sequence number of the event it answers.
type SeqResponse = (u64, VcpuResponse);

/// Waits until `deadline` for the answer to event `seq`, discarding answers to earlier
/// events (their callers timed out). Sequence numbers only grow, so anything below `seq`
/// is stale; nothing above it can exist while this caller is the only one waiting.
fn await_response(
    responses: &Receiver<SeqResponse>,
    seq: u64,
    deadline: Instant,
) -> Result<VcpuResponse, RecvTimeoutError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (got, response) = responses.recv_timeout(left)?;
        if got == seq {
            return Ok(response);
        }
        log::debug!("vCPU answer {response:?} to request {got} came late; discarded");
    }
}

/// Where vCPU threads report that they stopped: a channel for the reason and an eventfd the
/// VMM loop polls.
#[derive(Debug)]
pub struct VcpuExitSink {
    tx: Sender<(u8, VcpuExitReason)>,
    evt: EventFd,
}

impl VcpuExitSink {
    pub fn new(tx: Sender<(u8, VcpuExitReason)>, evt: EventFd) -> Self {
        Self { tx, evt }
    }

    pub fn try_clone(&self) -> Result<Self, VcpuError> {
        Ok(Self {
            tx: self.tx.clone(),
            evt: self.evt.try_clone().map_err(VcpuError::ExitEvent)?,
        })
    }

    fn report(&self, index: u8, reason: VcpuExitReason) {
        // The receiver lives on the VMM thread until the process exits; if it is gone there
        // is nobody left to tell.
        let _ = self.tx.send((index, reason));
        if let Err(e) = self.evt.write(1) {
            log::error!("vCPU {index}: cannot signal its exit: {e}");
        }
    }
}

thread_local! {
    /// The running vCPU's `kvm_run`, for the kick signal handler.
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN_PTR.with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is set by this thread to its own vCPU's kvm_run mapping and
            // cleared before the VcpuFd (and the mapping) is dropped; a volatile byte store is
            // async-signal-safe.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick signal handler; call once before starting vCPU threads.
pub fn register_kick_signal_handler() -> Result<(), VcpuError> {
    register_signal_handler(SIGRTMIN() + KICK_SIGNAL_OFFSET, handle_kick)
        .map_err(VcpuError::KickHandler)
}

/// A vCPU that has not started yet.
#[derive(Debug)]
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    pio: Bus,
    mmio: Bus,
    /// The VM's guest memory as registered with KVM: held by the vCPU (and its thread) so
    /// that the mapping KVM_RUN works on cannot be unmapped while this vCPU exists.
    _memory: GuestMemoryMmap,
    /// What saving the state needs (host XSAVE size, MSR list); none: saving is refused.
    persist: Option<Arc<VcpuPersistContext>>,
}

type StateResult = Result<VcpuState, VcpuStateError>;

impl Vcpu {
    pub fn new(vm: &Vm, index: u8, pio: Bus, mmio: Bus) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        Ok(Self {
            index,
            fd,
            pio,
            mmio,
            _memory: vm.memory().clone(),
            persist: None,
        })
    }

    /// Lets this vCPU save its state on request ([`VcpuEvent::SaveState`]).
    pub fn set_persist_context(&mut self, ctx: Arc<VcpuPersistContext>) {
        self.persist = Some(ctx);
    }

    /// Writes a saved state into this vCPU before it first runs (snapshot restore).
    pub fn restore(&self, state: &VcpuState, ctx: &VcpuPersistContext) -> Result<(), VcpuError> {
        if state.index != self.index {
            return Err(VcpuStateError::Invalid {
                index: self.index,
                reason: format!("state of vCPU {} given", state.index),
            }
            .into());
        }
        restore_vcpu(&self.fd, state, ctx)?;
        Ok(())
    }

    pub fn index(&self) -> u8 {
        self.index
    }

    /// CPUID, MSRs and LAPIC for this vCPU; `boot` (the boot vCPU only) also sets the entry
    /// registers.
    pub fn configure(
        &self,
        supported_cpuid: &CpuId,
        topology: Topology,
        boot: Option<(EntryProtocol, u64, u64)>,
    ) -> Result<(), VcpuError> {
        let index = self.index;
        let cpuid = cpuid::normalize(supported_cpuid, index, topology)
            .map_err(|source| VcpuError::CpuidTable { index, source })?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|source| VcpuError::Cpuid { index, source })?;
        let refused = setup_msrs(&self.fd).map_err(|source| VcpuError::Msrs { index, source })?;
        if !refused.is_empty() {
            let list: Vec<String> = refused.iter().map(|m| format!("{m:#x}")).collect();
            log::info!("vCPU {index}: KVM refused boot MSRs {}", list.join(", "));
        }
        setup_lapic(&self.fd).map_err(|source| VcpuError::Lapic { index, source })?;
        if let Some((protocol, entry, boot_info)) = boot {
            setup_boot_vcpu(&self.fd, protocol, entry, boot_info)
                .map_err(|source| VcpuError::Regs { index, source })?;
        }
        Ok(())
    }

    /// Starts the `vcpu N` thread.
    pub fn start(self, exits: VcpuExitSink) -> Result<VcpuHandle, VcpuError> {
        Ok(self.start_with(exits, false)?.0)
    }

    /// Starts the `vcpu N` thread; with `paused` it is paused before its first KVM_RUN (a
    /// restored VM starts paused) and the returned request waits for that Pause's answer.
    pub fn start_with(
        self,
        exits: VcpuExitSink,
        paused: bool,
    ) -> Result<(VcpuHandle, Option<VcpuRequest>), VcpuError> {
        let index = self.index;
        let (event_tx, event_rx) = channel();
        let (response_tx, response_rx) = channel();
        let (state_tx, state_rx) = channel();
        let mut first = None;
        if paused {
            // Queued before the thread exists: it reads it before its first KVM_RUN.
            let _ = event_tx.send((1, VcpuEvent::Pause));
            first = Some(VcpuRequest(1));
        }
        let thread = std::thread::Builder::new()
            .name(format!("vcpu {index}"))
            .stack_size(VCPU_STACK_SIZE)
            .spawn(move || self.run(event_rx, response_tx, state_tx, exits))
            .map_err(|source| VcpuError::Spawn { index, source })?;
        Ok((
            VcpuHandle {
                index,
                events: event_tx,
                responses: response_rx,
                states: state_rx,
                next_seq: AtomicU64::new(if paused { 2 } else { 1 }),
                thread: Some(thread),
            },
            first,
        ))
    }

    /// Saves this vCPU's state from its own thread, outside KVM_RUN.
    fn save(&mut self) -> StateResult {
        let Some(ctx) = self.persist.clone() else {
            return Err(VcpuStateError::Invalid {
                index: self.index,
                reason: "this vCPU was started without snapshot support".into(),
            });
        };
        // A KVM_RUN with immediate_exit set completes an I/O exit handled last (KVM writes
        // an IN's data to RAX and moves RIP only on the next entry) without entering the
        // guest, so the saved registers are those after the instruction.
        self.fd.set_kvm_immediate_exit(1);
        let _ = self.fd.run();
        self.fd.set_kvm_immediate_exit(0);
        save_vcpu(&self.fd, self.index, &ctx)
    }

    fn run(
        mut self,
        events: Receiver<SeqEvent>,
        responses: Sender<SeqResponse>,
        states: Sender<StateResult>,
        exits: VcpuExitSink,
    ) {
        // The filter goes on before the first KVM_RUN, i.e. before any guest input.
        if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Vcpu) {
            exits.report(self.index, VcpuExitReason::Crash(e.to_string()));
            return;
        }
        let cpu = crate::usage::register_current(crate::usage::ThreadRole::Vcpu(self.index));
        KVM_RUN_PTR.with(|p| p.set(self.fd.get_kvm_run() as *mut kvm_run));
        let reason = self.run_loop(&events, &responses, &states);
        KVM_RUN_PTR.with(|p| p.set(std::ptr::null_mut()));
        // The thread's CPU clock ends with it: keep its last value for the final record,
        // before the exit report makes the VMM thread write that record.
        cpu.sample_self();
        match &reason {
            VcpuExitReason::Crash(why) => log::error!("vCPU {}: {why}", self.index),
            VcpuExitReason::TripleFault => {
                log::error!(
                    "vCPU {}: triple fault (KVM_EXIT_SHUTDOWN), the guest crashed",
                    self.index
                )
            }
            other => log::info!("vCPU {}: stopped: {other:?}", self.index),
        }
        exits.report(self.index, reason);
    }

    fn run_loop(
        &mut self,
        events: &Receiver<SeqEvent>,
        responses: &Sender<SeqResponse>,
        states: &Sender<StateResult>,
    ) -> VcpuExitReason {
        loop {
            match events.try_recv() {
                Ok((seq, VcpuEvent::Pause)) => {
                    if let Some(reason) = self.paused(seq, events, responses, states) {
                        return reason;
                    }
                }
                Ok((_, VcpuEvent::SaveState)) => {
                    let _ = states.send(self.save());
                }
                Ok((seq, VcpuEvent::Resume)) => {
                    let _ = responses.send((seq, VcpuResponse::Resumed));
                }
                Ok((_, VcpuEvent::Stop)) | Err(TryRecvError::Disconnected) => {
                    return VcpuExitReason::Stopped
                }
                Err(TryRecvError::Empty) => {}
            }
            if let Some(reason) = self.run_once() {
                return reason;
            }
        }
    }

    /// Waits while paused; returns a reason if the vCPU must stop instead of resuming.
    fn paused(
        &mut self,
        seq: u64,
        events: &Receiver<SeqEvent>,
        responses: &Sender<SeqResponse>,
        states: &Sender<StateResult>,
    ) -> Option<VcpuExitReason> {
        let _ = responses.send((seq, VcpuResponse::Paused));
        loop {
            match events.recv() {
                Ok((_, VcpuEvent::SaveState)) => {
                    let _ = states.send(self.save());
                }
                Ok((seq, VcpuEvent::Resume)) => {
                    let _ = responses.send((seq, VcpuResponse::Resumed));
                    return None;
                }
                Ok((seq, VcpuEvent::Pause)) => {
                    let _ = responses.send((seq, VcpuResponse::Paused));
                }
                Ok((_, VcpuEvent::Stop)) | Err(_) => return Some(VcpuExitReason::Stopped),
            }
        }
    }

    /// One KVM_RUN; returns a reason when the vCPU must stop.
    fn run_once(&mut self) -> Option<VcpuExitReason> {
        let result = self.fd.run();
        count_exit(&result);
        match result {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !self.pio.read(u64::from(port), data) {
                    // Nothing decodes this port: the bus floats high.
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !self.pio.write(u64::from(port), data) {
                    log::trace!("vCPU {}: unhandled write to port {port:#x}", self.index);
                }
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio.read(addr, data) {
                    data.fill(0);
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !self.mmio.write(addr, data) {
                    log::trace!("vCPU {}: unhandled MMIO write at {addr:#x}", self.index);
                }
                None
            }
            Ok(VcpuExit::Hlt) => Some(VcpuExitReason::Halted),
            Ok(VcpuExit::Shutdown) => Some(VcpuExitReason::TripleFault),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET => {
                    Some(VcpuExitReason::GuestShutdown)
                }
                KVM_SYSTEM_EVENT_CRASH => Some(VcpuExitReason::Crash(
                    "the guest reported a crash (KVM_SYSTEM_EVENT_CRASH)".into(),
                )),
                other => Some(VcpuExitReason::Crash(format!(
                    "unexpected KVM system event {other}"
                ))),
            },
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(VcpuExitReason::Crash(format!(
                "KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on host CPU {cpu}"
            ))),
            Ok(VcpuExit::InternalError) => {
                let suberror = self.internal_error_suberror();
                Some(VcpuExitReason::Crash(format!(
                    "KVM_EXIT_INTERNAL_ERROR (suberror {suberror}): KVM could not emulate the guest"
                )))
            }
            Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => None,
            Ok(other) => Some(VcpuExitReason::Crash(format!(
                "unexpected KVM exit: {other:?}"
            ))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Kicked: clear the request and look at the messages.
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => Some(VcpuExitReason::Crash(format!("KVM_RUN failed: {e}"))),
        }
    }

    fn internal_error_suberror(&mut self) -> u32 {
        let run = self.fd.get_kvm_run();
        // SAFETY: after KVM_EXIT_INTERNAL_ERROR the kernel filled the `internal` member of
        // the exit union; reading a plain u32 from it is valid.
        unsafe { run.__bindgen_anon_1.internal.suberror }
    }
}

/// Bumps the `vcpu` metrics for one KVM_RUN outcome.
fn count_exit(result: &Result<VcpuExit<'_>, kvm_ioctls::Error>) {
    let m = &crate::metrics::global().vcpu;
    match result {
        Ok(VcpuExit::IoIn(..)) => m.exit_io_in.inc(),
        Ok(VcpuExit::IoOut(..)) => m.exit_io_out.inc(),
        Ok(VcpuExit::MmioRead(..)) => m.exit_mmio_read.inc(),
        Ok(VcpuExit::MmioWrite(..)) => m.exit_mmio_write.inc(),
        Ok(VcpuExit::Hlt) => m.exit_hlt.inc(),
        Ok(VcpuExit::Shutdown) => m.exit_shutdown.inc(),
        Ok(_) => m.exit_other.inc(),
        // A kick is how pause and stop reach the thread, not a failure.
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
        Err(_) => m.failures.inc(),
    }
}

/// The VMM thread's handle on a running vCPU. Dropping it stops the thread and waits for it.
#[derive(Debug)]
pub struct VcpuHandle {
    index: u8,
    events: Sender<SeqEvent>,
    responses: Receiver<SeqResponse>,
    /// Saved states, answers to [`VcpuEvent::SaveState`] (one caller at a time: the VMM
    /// thread, while the VM is paused).
    states: Receiver<StateResult>,
    /// The sequence number of the next event.
    next_seq: AtomicU64,
    /// `None` once joined (in `drop`).
    thread: Option<JoinHandle<()>>,
}

/// A request sent to a vCPU: pass it to [`VcpuHandle::response`] to wait for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "wait for the answer with VcpuHandle::response"]
pub struct VcpuRequest(u64);

impl VcpuHandle {
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Sends `event` and kicks the thread out of KVM_RUN so it sees it.
    pub fn send_event(&self, event: VcpuEvent) -> Result<VcpuRequest, VcpuError> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        self.events
            .send((seq, event))
            .map_err(|_| VcpuError::Gone(self.index))?;
        self.kick();
        Ok(VcpuRequest(seq))
    }

    /// Waits for the thread's answer to `request` (a Pause or Resume); answers to earlier
    /// requests that arrive meanwhile are discarded.
    pub fn response(
        &self,
        request: VcpuRequest,
        timeout: Duration,
    ) -> Result<VcpuResponse, VcpuError> {
        await_response(&self.responses, request.0, Instant::now() + timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => VcpuError::NoResponse(self.index),
            RecvTimeoutError::Disconnected => VcpuError::Gone(self.index),
        })
    }

    /// Asks the (paused) vCPU for its state and waits for it.
    pub fn save_state(&self, timeout: Duration) -> Result<VcpuState, VcpuError> {
        let _ = self.send_event(VcpuEvent::SaveState)?;
        let state = self.states.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => VcpuError::NoResponse(self.index),
            RecvTimeoutError::Disconnected => VcpuError::Gone(self.index),
        })?;
        Ok(state?)
    }

    /// Asks the thread to stop without waiting for it (drop waits).
    pub fn request_stop(&self) {
        // A thread that has gone already needs no message.
        if self.send_event(VcpuEvent::Stop).is_err() {
            log::debug!("vCPU {}: already stopped", self.index);
        }
    }

    fn kick(&self) {
        let Some(thread) = &self.thread else {
            return;
        };
        if thread.is_finished() {
            return;
        }
        // SAFETY: the pthread_t comes from a JoinHandle we still own, so the thread has not
        // been joined or detached and the id is valid; the signal has a handler installed.
        let ret =
            unsafe { libc::pthread_kill(thread.as_pthread_t(), SIGRTMIN() + KICK_SIGNAL_OFFSET) };
        if ret != 0 {
            log::warn!("vCPU {}: kick failed: errno {ret}", self.index);
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        // Stop is read before the next KVM_RUN, and the kick (immediate_exit) makes a
        // running KVM_RUN return, so the join below cannot wait on the guest.
        self.request_stop();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("vCPU {}: the thread panicked", self.index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::Receiver;

    use virtio::GuestMemoryMmap;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::arch::regs::write_boot_tables;
    use crate::vstate::kvm::open_for_tests;
    use crate::vstate::memory::create_guest_memory;

    const TIMEOUT: Duration = Duration::from_secs(20);
    const CODE: u64 = 0x10_0000;

    /// A running test vCPU with what must outlive it.
    type TestGuest = (
        VcpuHandle,
        Receiver<(u8, VcpuExitReason)>,
        GuestMemoryMmap,
        Vm,
    );

    /// Starts one vCPU running `code` in long mode; None when the host has no KVM (a
    /// failure instead under CI, see [`open_for_tests`]).
    fn start_guest(code: &[u8]) -> Option<TestGuest> {
        let kvm = open_for_tests()?;
        let mut vm = Vm::new(&kvm).unwrap();
        let mem = create_guest_memory(4 << 20, crate::config::HugePages::None).unwrap();
        vm.register_memory(&mem, false).unwrap();
        mem.write_slice(code, GuestAddress(CODE)).unwrap();
        write_boot_tables(&mem, EntryProtocol::Linux64).unwrap();
        let vcpu = Vcpu::new(&vm, 0, Bus::new(), Bus::new()).unwrap();
        let cpuid = kvm.supported_cpuid().unwrap();
        vcpu.configure(
            &cpuid,
            Topology::new(1, false),
            Some((EntryProtocol::Linux64, CODE, 0)),
        )
        .unwrap();
        register_kick_signal_handler().unwrap();
        let (tx, rx) = channel();
        let evt = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let handle = vcpu.start(VcpuExitSink::new(tx, evt)).unwrap();
        Some((handle, rx, mem, vm))
    }

    #[test]
    fn a_spinning_vcpu_pauses_resumes_and_stops() {
        // jmp $: never exits to user space by itself, so only the kick can interrupt it.
        let Some((vcpu, exits, _mem, _vm)) = start_guest(&[0xeb, 0xfe]) else {
            return;
        };
        let pause = vcpu.send_event(VcpuEvent::Pause).unwrap();
        assert_eq!(vcpu.response(pause, TIMEOUT).unwrap(), VcpuResponse::Paused);
        let resume = vcpu.send_event(VcpuEvent::Resume).unwrap();
        assert_eq!(
            vcpu.response(resume, TIMEOUT).unwrap(),
            VcpuResponse::Resumed
        );
        let _ = vcpu.send_event(VcpuEvent::Stop).unwrap();
        let (index, reason) = exits.recv_timeout(TIMEOUT).unwrap();
        assert_eq!((index, reason), (0, VcpuExitReason::Stopped));
    }

    #[test]
    fn an_answer_after_its_caller_gave_up_does_not_answer_the_next_request() {
        let Some((vcpu, _exits, _mem, _vm)) = start_guest(&[0xeb, 0xfe]) else {
            return;
        };
        // Nobody waits for this answer: it arrives after its caller "timed out".
        let _ = vcpu.send_event(VcpuEvent::Pause).unwrap();
        let resume = vcpu.send_event(VcpuEvent::Resume).unwrap();
        assert_eq!(
            vcpu.response(resume, TIMEOUT).unwrap(),
            VcpuResponse::Resumed,
            "the late Paused must be discarded, not taken for the Resume's answer"
        );
    }

    #[test]
    fn stale_answers_are_discarded_and_a_missing_one_times_out() {
        let (tx, rx) = channel();
        tx.send((1, VcpuResponse::Paused)).unwrap();
        tx.send((2, VcpuResponse::Paused)).unwrap();
        tx.send((3, VcpuResponse::Resumed)).unwrap();
        let soon = || Instant::now() + Duration::from_millis(50);
        assert_eq!(await_response(&rx, 3, soon()), Ok(VcpuResponse::Resumed));
        // Answer 4 never comes; the stale 2 and 3 do not stand in for it.
        tx.send((2, VcpuResponse::Resumed)).unwrap();
        assert_eq!(
            await_response(&rx, 4, soon()),
            Err(RecvTimeoutError::Timeout)
        );
        tx.send((4, VcpuResponse::Paused)).unwrap();
        assert_eq!(await_response(&rx, 4, soon()), Ok(VcpuResponse::Paused));
        drop(tx);
        assert_eq!(
            await_response(&rx, 5, soon()),
            Err(RecvTimeoutError::Disconnected)
        );
    }

    #[test]
    fn dropping_the_handle_stops_and_joins_a_running_vcpu() {
        // jmp $: only a kick gets the thread out of KVM_RUN.
        let Some((vcpu, exits, _mem, _vm)) = start_guest(&[0xeb, 0xfe]) else {
            return;
        };
        drop(vcpu);
        // The thread has finished (it reported before exiting), not merely been told to.
        assert_eq!(exits.try_recv().unwrap(), (0, VcpuExitReason::Stopped));
    }

    #[test]
    fn a_triple_fault_is_reported() {
        // ud2 with no IDT: #UD cannot be delivered, the CPU shuts down.
        let Some((_vcpu, exits, _mem, _vm)) = start_guest(&[0x0f, 0x0b]) else {
            return;
        };
        let (_, reason) = exits.recv_timeout(TIMEOUT).unwrap();
        assert_eq!(reason, VcpuExitReason::TripleFault);
    }
}
