//! The one place that turns a configuration into a running VM.

use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::Instant;

use devices::legacy::SerialOut;
use virtio::GuestMemoryMmap;
use virtio::{IoThread, IoThreadError, IoThreadHandle};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::boot_params::{write_pvh_info, write_zero_page, BootInfo, BootParamsError};
use crate::arch::cpu_template::{self, TemplateError};
use crate::arch::cpuid::{self, CpuidError, Topology};
use crate::arch::kernel::{load_cmdline, load_initrd, load_kernel, KernelError};
use crate::arch::layout::arch_memory_regions;
use crate::arch::mptable::{setup_mptable, MpTableError};
use crate::arch::regs::{default_boot_info, write_boot_tables, EntryProtocol, RegsError};
use crate::boot_phases;
use crate::config::{DriveUpdate, NetworkInterfaceUpdate, VmConfig};
use crate::console::ConsoleWriter;
use crate::device_manager::acpi::{
    attach_acpi, register_acpi_metrics, AcpiDeviceError, AcpiDevices,
};
use crate::device_manager::balloon::{attach_balloon, BalloonDevice, BalloonDeviceError};
use crate::device_manager::block::{
    attach_drives, check_drives, drive_cmdline_args, register_drive_metrics, update_drive,
    BlockDevice, DriveError,
};
use crate::device_manager::entropy::{attach_entropy, EntropyDevice, EntropyError};
use crate::device_manager::legacy::{attach_legacy_devices, LegacyDevices, LegacyError};
use crate::device_manager::mmio::{MmioAllocator, MmioSlot};
use crate::device_manager::net::{
    attach_net_devices, register_net_metrics, update_net_device, NetDevice, NetDeviceError,
};
use crate::device_manager::vsock::{attach_vsock, VsockDevice, VsockDeviceError};
use crate::device_manager::DeviceBuses;
use crate::metrics;
use crate::persist::memory::MemorySource;
use crate::sink::open_nonblocking;
use crate::vstate::kvm::{KvmContext, KvmError};
use crate::vstate::memory::{create_guest_memory, MemoryError};
use crate::vstate::vcpu::{
    register_kick_signal_handler, Vcpu, VcpuError, VcpuEvent, VcpuExitReason, VcpuExitSink,
    VcpuHandle, VcpuResponse,
};
use crate::vstate::vcpu_state::VcpuPersistContext;
use crate::vstate::vm::{Vm, VmError};

/// Kernel command line used when the configuration gives none.
pub const DEFAULT_BOOT_ARGS: &str =
    "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.dumbkbd";

/// Errors while building and starting the VM; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("boot-source: missing; a kernel is required to start the VM")]
    MissingBootSource,
    #[error("mmds-config: {0}")]
    Mmds(String),
    #[error("serial.serial_out_path: cannot open `{path}`: {source}")]
    SerialOut {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    BootParams(#[from] BootParamsError),
    #[error(transparent)]
    MpTable(#[from] MpTableError),
    #[error(transparent)]
    BootTables(#[from] RegsError),
    #[error(transparent)]
    Legacy(#[from] LegacyError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Cpuid(#[from] CpuidError),
    #[error(transparent)]
    CpuTemplate(#[from] TemplateError),
    #[error(transparent)]
    Acpi(#[from] AcpiDeviceError),
    #[error("cannot create the vCPU exit eventfd: {0}")]
    ExitEvent(std::io::Error),
    #[error(transparent)]
    Drive(#[from] DriveError),
    #[error(transparent)]
    Net(#[from] NetDeviceError),
    #[error("entropy: {0}")]
    Entropy(#[from] EntropyError),
    #[error("vsock: {0}")]
    Vsock(#[from] VsockDeviceError),
    #[error("balloon: {0}")]
    Balloon(#[from] BalloonDeviceError),
    #[error("io thread: {0}")]
    IoThread(#[from] IoThreadError),
}

/// Runs first on the `io` thread, before it touches any guest input: the place to install
/// that thread's seccomp filter. An error stops the thread and the boot.
pub type ThreadStartHook = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// Per-thread start-up hooks (seccomp filters), separate from [`BuildOptions`] so that the
/// options stay plain data.
#[derive(Default)]
pub struct BootHooks {
    pub io_thread: Option<ThreadStartHook>,
}

impl std::fmt::Debug for BootHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootHooks")
            .field("io_thread", &self.io_thread.is_some())
            .finish()
    }
}

/// Options that do not come from the VM configuration.
#[derive(Debug, Default, Clone)]
pub struct BuildOptions {
    /// With `--boot-timer`: the process start, for the boot-timer port.
    pub boot_timer: Option<Instant>,
    /// The metadata service the interfaces in `mmds-config` answer from (the VMM's store).
    pub mmds: Option<std::sync::Arc<std::sync::Mutex<mmds::Mmds>>>,
}

/// A running VM and everything the VMM thread needs to drive it.
///
/// Dropping it stops and joins every vCPU first, then the `io` thread, and only then
/// releases devices, memory and the VM: no thread can touch guest memory or a device after
/// it is gone. (Guest memory is also held by `vm` and by each vCPU, see [`Vm`].)
#[derive(Debug)]
pub struct RunningVm {
    pub kvm: KvmContext,
    pub vm: Vm,
    /// Guest RAM (a handle on the mappings `vm` registered with KVM).
    pub memory: GuestMemoryMmap,
    pub legacy: LegacyDevices,
    /// The ACPI sleep registers and the VM generation ID.
    pub acpi: AcpiDevices,
    pub vcpus: Vec<VcpuHandle>,
    /// Why each vCPU stopped; `vcpu_exit_evt` is signalled on each report.
    pub vcpu_exits: Receiver<(u8, VcpuExitReason)>,
    pub vcpu_exit_evt: EventFd,
    /// virtio-blk devices, in configuration order.
    pub drives: Vec<BlockDevice>,
    /// virtio-net devices, in configuration order (after the drives on the MMIO bus).
    pub nets: Vec<NetDevice>,
    /// The virtio-rng device, when configured (after the network interfaces on the bus).
    pub entropy: Option<EntropyDevice>,
    /// The memory balloon, when configured (after the entropy device on the bus).
    pub balloon: Option<BalloonDevice>,
    /// The vsock device, when configured (after the balloon on the bus).
    pub vsock: Option<VsockDevice>,
    /// The loop serving every virtio device; stopped and joined on drop.
    pub io_thread: Option<IoThreadHandle>,
    /// Host facts for saving vCPU states.
    pub persist: Arc<VcpuPersistContext>,
    /// For a restored VM: the memory file its RAM maps (pages not faulted in yet live there).
    pub memory_source: Option<MemorySource>,
    /// KVM logs dirty pages (machine-config.track_dirty_pages or the load's
    /// track_dirty_pages): Diff snapshots are possible.
    pub track_dirty_pages: bool,
    /// Uffd backend: the connection to the page-fault handler (kept open for the life of the
    /// VM, as Firecracker does) and xenia's copy of the userfaultfd.
    pub uffd: Option<(
        std::os::unix::net::UnixStream,
        crate::persist::uffd::UffdHandle,
    )>,
}

/// The devices of a VM, created from its configuration; the same for a cold boot and a
/// restore (which then applies saved states on top).
pub(crate) struct Devices {
    pub buses: DeviceBuses,
    pub legacy: LegacyDevices,
    pub drives: Vec<BlockDevice>,
    pub nets: Vec<NetDevice>,
    pub entropy: Option<EntropyDevice>,
    pub balloon: Option<BalloonDevice>,
    pub vsock: Option<VsockDevice>,
    /// The loop for the virtio devices; `None` without any (no `io` thread then: an idle
    /// VM without devices costs one thread, its stack and its kernel task less).
    pub io: Option<IoThread>,
}

/// The metadata service as `mmds-config` asks for it: its version and output format set on
/// the VMM's store (a boot or a restore applies the saved configuration).
fn mmds_for_devices(
    config: &VmConfig,
    options: &BuildOptions,
) -> Result<Option<crate::device_manager::net::MmdsForNets>, StartError> {
    let Some(cfg) = &config.mmds_config else {
        return Ok(None);
    };
    let Some(service) = options.mmds.clone() else {
        return Err(StartError::Mmds(
            "mmds-config is set but the VMM has no MMDS data store".into(),
        ));
    };
    service
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .configure(cfg.version, cfg.imds_compat);
    Ok(Some(crate::device_manager::net::MmdsForNets {
        config: cfg.clone(),
        service,
    }))
}

/// Creates every device of `config` on `vm` with `memory`, in the fixed order that decides
/// their MMIO windows and IRQs: legacy devices, drives, network interfaces, the entropy
/// device, the balloon, the vsock device.
pub(crate) fn create_devices(
    config: &VmConfig,
    vm: &Vm,
    memory: &GuestMemoryMmap,
    options: BuildOptions,
) -> Result<Devices, StartError> {
    check_drives(&config.drives)?;
    let serial_out = serial_output(config)?;
    let mut buses = DeviceBuses::default();
    let legacy = attach_legacy_devices(vm, &mut buses, serial_out, options.boot_timer)?;
    let mut allocator = MmioAllocator::default();
    let drives = attach_drives(vm, &mut buses, &mut allocator, memory, &config.drives)?;
    register_drive_metrics(&drives, metrics::global());
    let mmds = mmds_for_devices(config, &options)?;
    let nets = attach_net_devices(
        vm,
        &mut buses,
        &mut allocator,
        memory,
        &config.network_interfaces,
        mmds.as_ref(),
    )?;
    register_net_metrics(&nets, metrics::global());
    let entropy = match &config.entropy {
        Some(cfg) => {
            let dev = attach_entropy(vm, &mut buses, &mut allocator, memory, cfg)?;
            dev.register_metrics(metrics::global());
            Some(dev)
        }
        None => None,
    };
    let balloon = match &config.balloon {
        Some(cfg) => {
            let dev = attach_balloon(vm, &mut buses, &mut allocator, memory, cfg)?;
            dev.register_metrics(metrics::global());
            Some(dev)
        }
        None => None,
    };
    let vsock = match &config.vsock {
        Some(cfg) => {
            let dev = attach_vsock(vm, &mut buses, &mut allocator, memory, cfg)?;
            dev.register_metrics(metrics::global());
            Some(dev)
        }
        None => None,
    };
    let subscribers: Vec<_> = drives
        .iter()
        .map(BlockDevice::subscriber)
        .chain(nets.iter().map(NetDevice::subscriber))
        .chain(entropy.iter().map(EntropyDevice::subscriber))
        .chain(balloon.iter().map(BalloonDevice::subscriber))
        .chain(vsock.iter().map(VsockDevice::subscriber))
        .collect();
    let io = if subscribers.is_empty() {
        None
    } else {
        let mut io = IoThread::new()?;
        for s in subscribers {
            io.add_subscriber(s);
        }
        Some(io)
    };
    Ok(Devices {
        buses,
        legacy,
        drives,
        nets,
        entropy,
        balloon,
        vsock,
        io,
    })
}

/// Starts the `io` thread with its start-up hook, when there is a device for it to serve.
pub(crate) fn start_io_thread(
    io: Option<IoThread>,
    hook: Option<ThreadStartHook>,
) -> Result<Option<IoThreadHandle>, StartError> {
    let Some(io) = io else {
        return Ok(None);
    };
    Ok(Some(io.start(move || {
        // The io thread never ends before the VMM has written its final usage record (it
        // is stopped when the VM is dropped), so its clock is read live.
        crate::usage::register_current(crate::usage::ThreadRole::Io);
        match hook {
            Some(hook) => hook(),
            None => Ok(()),
        }
    })?))
}

/// Started vCPU threads with the channel and eventfd through which they report exits.
pub(crate) type StartedVcpus = (Vec<VcpuHandle>, Receiver<(u8, VcpuExitReason)>, EventFd);

/// Starts every vCPU thread (paused with `paused`), with the exit channel the VMM watches.
pub(crate) fn start_vcpus(vcpus: Vec<Vcpu>, paused: bool) -> Result<StartedVcpus, StartError> {
    // These vCPUs register their own CPU clocks; slots of an earlier, failed attempt go.
    crate::usage::cpu::forget_vcpus();
    register_kick_signal_handler()?;
    let vcpu_exit_evt = EventFd::new(EFD_NONBLOCK).map_err(StartError::ExitEvent)?;
    let (exit_tx, vcpu_exits) = channel();
    let sink = VcpuExitSink::new(
        exit_tx,
        vcpu_exit_evt.try_clone().map_err(StartError::ExitEvent)?,
    );
    // If a vCPU cannot start, the handles of those already running are dropped on the way
    // out, which stops and joins them before anything else of this build is released.
    let mut handles = Vec::with_capacity(vcpus.len());
    let mut pauses = Vec::new();
    for v in vcpus {
        let (handle, pause) = v.start_with(sink.try_clone()?, paused)?;
        pauses.extend(pause.map(|p| (handles.len(), p)));
        handles.push(handle);
    }
    for (i, pause) in pauses {
        let h: &VcpuHandle = &handles[i];
        if h.response(pause, VCPU_RESPONSE_TIMEOUT)? != VcpuResponse::Paused {
            return Err(VcpuError::NoResponse(h.index()).into());
        }
    }
    Ok((handles, vcpu_exits, vcpu_exit_evt))
}

fn serial_output(config: &VmConfig) -> Result<SerialOut, StartError> {
    let limit = config.serial.as_ref().and_then(|s| s.rate_limiter.as_ref());
    match config
        .serial
        .as_ref()
        .and_then(|s| s.serial_out_path.as_ref())
    {
        Some(path) => {
            // Non-blocking: a FIFO nobody reads must not stop the vCPU writing to the UART.
            let file = open_nonblocking(std::path::Path::new(path)).map_err(|source| {
                StartError::SerialOut {
                    path: path.clone(),
                    source,
                }
            })?;
            Ok(Box::new(ConsoleWriter::new(file, limit)))
        }
        None => Ok(Box::new(ConsoleWriter::new(std::io::stdout(), limit))),
    }
}

/// The kernel command line: the configured (or default) arguments, then what the devices
/// need: `root=` for the root drive and, for a guest told to ignore ACPI (`acpi=off`), one
/// `virtio_mmio.device=` per virtio device in `device_slots` order (drives first). With ACPI
/// the DSDT describes the devices; listing them twice would make Linux probe each twice.
pub fn kernel_cmdline(config: &VmConfig, device_slots: &[MmioSlot]) -> String {
    let base = config
        .boot_source
        .as_ref()
        .and_then(|b| b.boot_args.as_deref())
        .unwrap_or(DEFAULT_BOOT_ARGS);
    let acpi_off = base.split_whitespace().any(|w| w == "acpi=off");
    let slots = if acpi_off { device_slots } else { &[] };
    let mut line = base.trim().to_owned();
    for arg in drive_cmdline_args(&config.drives, slots) {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&arg);
    }
    line
}

/// Builds the VM described by `config` and starts its vCPUs.
pub fn build_and_boot(config: &VmConfig, options: BuildOptions) -> Result<RunningVm, StartError> {
    build_and_boot_with(config, options, BootHooks::default())
}

/// Stack of the short-lived `memslot` thread: one ioctl and an error value.
const MEMSLOT_STACK_SIZE: usize = 64 << 10;

/// [`build_and_boot`] with start-up hooks for the threads it creates.
///
/// Registering guest memory with KVM is the longest step of a start (5-11 ms under PVM,
/// waiting in the kernel), and nothing before the first KVM_RUN needs it done: the CPUID
/// query, devices, kernel load and vCPU set-up only write the mapping or talk to KVM through
/// other locks. So it runs on a `memslot` thread while this thread does all that, and the
/// vCPUs start only once both are done. Either failing fails the start with its own error
/// (this thread's first) after the other has finished, and nothing is left running: the
/// vCPU and `io` threads start after the join.
pub fn build_and_boot_with(
    config: &VmConfig,
    options: BuildOptions,
    hooks: BootHooks,
) -> Result<RunningVm, StartError> {
    boot_phases::mark("build");
    let boot_source = config
        .boot_source
        .as_ref()
        .ok_or(StartError::MissingBootSource)?;
    let machine = config.machine_config.clone().unwrap_or_default();
    let mem_size = machine.mem_size_bytes();

    let kvm = KvmContext::open()?;
    let mut vm = Vm::new(&kvm)?;
    boot_phases::mark("vm_created");
    let memory = create_guest_memory(mem_size, machine.huge_pages)?;
    vm.keep_memory(&memory);
    boot_phases::mark("memory_mapped");
    let vm = vm;
    let (prepared, registered) = std::thread::scope(|s| {
        let registration = std::thread::Builder::new()
            .name("memslot".into())
            .stack_size(MEMSLOT_STACK_SIZE)
            .spawn_scoped(s, || {
                let r = vm.register_slots(machine.track_dirty_pages);
                boot_phases::mark("slot_registered");
                r
            });
        let prepared = prepare_guest(config, options.clone(), &kvm, &vm, &memory, boot_source);
        let registered = match registration {
            Ok(handle) => handle.join().unwrap_or(Err(VmError::RegistrationThread)),
            // No thread: register here, as before the overlap.
            Err(_) => vm.register_slots(machine.track_dirty_pages),
        };
        (prepared, registered)
    });
    boot_phases::mark("joined");
    let Prepared {
        legacy,
        drives,
        nets,
        entropy,
        balloon,
        vsock,
        io,
        acpi,
        vcpus,
        persist,
    } = prepared?;
    registered?;

    let io_thread = start_io_thread(io, hooks.io_thread)?;
    let (handles, vcpu_exits, vcpu_exit_evt) = start_vcpus(vcpus, false)?;
    boot_phases::mark("vcpus_started");
    if let Some(start) = options.boot_timer {
        // Same level as the guest boot-time line, so a benchmark sees both by default.
        log::warn!(
            "Vcpus-started = {} us after process start",
            start.elapsed().as_micros()
        );
    }
    boot_phases::report();

    Ok(RunningVm {
        kvm,
        vm,
        memory,
        legacy,
        acpi,
        vcpus: handles,
        vcpu_exits,
        vcpu_exit_evt,
        drives,
        nets,
        entropy,
        balloon,
        vsock,
        io_thread,
        persist,
        memory_source: None,
        track_dirty_pages: machine.track_dirty_pages,
        uffd: None,
    })
}

/// How long the VMM waits for the vCPUs to acknowledge a pause or resume.
const VCPU_RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Drop for RunningVm {
    fn drop(&mut self) {
        // Every vCPU is told first so that they stop in parallel; dropping a handle joins it.
        for vcpu in &self.vcpus {
            vcpu.request_stop();
        }
        self.vcpus.clear();
        if let Some(io) = self.io_thread.take() {
            if let Err(e) = io.stop() {
                log::error!("io thread ended with: {e}");
            }
        }
    }
}

impl RunningVm {
    /// Injects Ctrl-Alt-Del through the i8042 (the API's `SendCtrlAltDel` action).
    pub fn send_ctrl_alt_del(&self) -> std::io::Result<()> {
        self.legacy
            .i8042
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .trigger_ctrl_alt_del()
    }

    fn broadcast(&self, event: VcpuEvent, expected: VcpuResponse) -> Result<(), VcpuError> {
        let requests = self
            .vcpus
            .iter()
            .map(|vcpu| vcpu.send_event(event))
            .collect::<Result<Vec<_>, _>>()?;
        // One deadline for all: the vCPUs answer in parallel.
        let deadline = Instant::now() + VCPU_RESPONSE_TIMEOUT;
        for (vcpu, request) in self.vcpus.iter().zip(requests) {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = vcpu.response(request, left)?;
            if got != expected {
                return Err(VcpuError::NoResponse(vcpu.index()));
            }
        }
        Ok(())
    }

    /// Stops every vCPU outside KVM_RUN and waits until all have acknowledged.
    pub fn pause(&self) -> Result<(), VcpuError> {
        self.broadcast(VcpuEvent::Pause, VcpuResponse::Paused)
    }

    /// Lets every vCPU run again.
    pub fn resume(&self) -> Result<(), VcpuError> {
        self.broadcast(VcpuEvent::Resume, VcpuResponse::Resumed)
    }

    /// `PATCH /drives/{id}`: a new backing file and/or rate limiter for a running drive.
    pub fn update_drive(&self, update: &DriveUpdate) -> Result<(), DriveError> {
        update_drive(&self.drives, update)
    }

    /// `PATCH /network-interfaces/{id}`: new rate limiters for a running interface.
    pub fn update_network_interface(
        &self,
        update: &NetworkInterfaceUpdate,
    ) -> Result<(), NetDeviceError> {
        update_net_device(&self.nets, update)
    }
}

#[path = "builder_prepare.rs"]
mod prepare;
use prepare::{prepare_guest, Prepared};

#[cfg(test)]
#[path = "builder_tests.rs"]
mod tests;
