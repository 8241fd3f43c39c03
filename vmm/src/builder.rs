//! The one place that turns a configuration into a running VM.

use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::Instant;

use devices::legacy::SerialOut;
use devices::EventFdTrigger;
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
#[derive(Debug, Default, Clone, Copy)]
pub struct BuildOptions {
    /// With `--boot-timer`: the process start, for the boot-timer port.
    pub boot_timer: Option<Instant>,
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
    pub io: IoThread,
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
    let nets = attach_net_devices(
        vm,
        &mut buses,
        &mut allocator,
        memory,
        &config.network_interfaces,
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
    let mut io = IoThread::new()?;
    for d in &drives {
        io.add_subscriber(d.subscriber());
    }
    for n in &nets {
        io.add_subscriber(n.subscriber());
    }
    if let Some(e) = &entropy {
        io.add_subscriber(e.subscriber());
    }
    if let Some(b) = &balloon {
        io.add_subscriber(b.subscriber());
    }
    if let Some(v) = &vsock {
        io.add_subscriber(v.subscriber());
    }
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

/// Starts the `io` thread with its start-up hook.
pub(crate) fn start_io_thread(
    io: IoThread,
    hook: Option<ThreadStartHook>,
) -> Result<IoThreadHandle, StartError> {
    Ok(io.start(move || {
        // The io thread never ends before the VMM has written its final usage record (it
        // is stopped when the VM is dropped), so its clock is read live.
        crate::usage::register_current(crate::usage::ThreadRole::Io);
        match hook {
            Some(hook) => hook(),
            None => Ok(()),
        }
    })?)
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

/// [`build_and_boot`] with start-up hooks for the threads it creates.
pub fn build_and_boot_with(
    config: &VmConfig,
    options: BuildOptions,
    hooks: BootHooks,
) -> Result<RunningVm, StartError> {
    let boot_source = config
        .boot_source
        .as_ref()
        .ok_or(StartError::MissingBootSource)?;
    let machine = config.machine_config.clone().unwrap_or_default();
    let mem_size = machine.mem_size_bytes();

    let kvm = KvmContext::open()?;
    let supported_cpuid = kvm.supported_cpuid()?;
    // The CPU template (static or custom) narrows what KVM offers before each vCPU's
    // normalisation; checked here again for a config file, which nothing checked before.
    let template = cpu_template::resolve(
        machine.cpu_template.as_deref(),
        config.cpu_config.as_ref(),
        cpu_template::host_vendor(&supported_cpuid),
    )?;
    let supported_cpuid = match &template {
        Some(t) => {
            t.check_host(&supported_cpuid)?;
            t.apply(&supported_cpuid)?
        }
        None => supported_cpuid,
    };
    let mem_end = arch_memory_regions(mem_size)
        .last()
        .map_or(0, |(start, len)| start.0 + len);
    cpuid::check_memory_end(&supported_cpuid, mem_end)?;
    let mut vm = Vm::new(&kvm)?;
    let memory = create_guest_memory(mem_size, machine.huge_pages)?;
    vm.register_memory(&memory, machine.track_dirty_pages)?;

    let Devices {
        mut buses,
        legacy,
        drives,
        nets,
        entropy,
        balloon,
        vsock,
        io,
    } = create_devices(config, &vm, &memory, options)?;

    let slots: Vec<MmioSlot> = drives
        .iter()
        .map(|d| d.mmio.slot)
        .chain(nets.iter().map(|n| n.mmio.slot))
        .chain(entropy.iter().map(|e| e.mmio.slot))
        .chain(balloon.iter().map(|b| b.mmio.slot))
        .chain(vsock.iter().map(|v| v.mmio.slot))
        .collect();
    let poweroff = EventFdTrigger::new(
        legacy
            .reset_evt
            .try_clone()
            .map_err(StartError::ExitEvent)?,
    );
    let acpi = attach_acpi(
        &vm,
        &mut buses,
        &memory,
        poweroff,
        machine.vcpu_count,
        slots.iter().map(MmioSlot::acpi_info).collect(),
    )?;
    register_acpi_metrics(&acpi, metrics::global());

    let kernel = load_kernel(&memory, &boot_source.kernel_image_path)?;
    log::info!(
        "kernel `{}` loaded: {:?} entry at {:#x}",
        boot_source.kernel_image_path,
        kernel.protocol,
        kernel.entry
    );
    let args = kernel_cmdline(config, &slots);
    log::debug!("kernel command line: {args}");
    let cmdline_len = load_cmdline(&memory, &args)?;
    let initrd = match &boot_source.initrd_path {
        Some(path) => Some(load_initrd(&memory, mem_size, kernel.kernel_end, path)?),
        None => None,
    };
    let info = BootInfo {
        mem_size,
        cmdline_len,
        initrd,
        setup_header: kernel.setup_header,
        rsdp: Some(acpi.rsdp),
    };
    match kernel.protocol {
        EntryProtocol::Linux64 => write_zero_page(&memory, &info)?,
        EntryProtocol::Pvh => write_pvh_info(&memory, &info)?,
    }
    write_boot_tables(&memory, kernel.protocol)?;
    setup_mptable(&memory, machine.vcpu_count)?;

    let io_thread = start_io_thread(io, hooks.io_thread)?;

    let persist = Arc::new(VcpuPersistContext::new(&kvm.kvm, vm.fd()));
    let topology = Topology::new(machine.vcpu_count, machine.smt);
    let mut vcpus = Vec::with_capacity(usize::from(machine.vcpu_count));
    for index in 0..machine.vcpu_count {
        let mut vcpu = Vcpu::new(&vm, index, buses.pio.clone(), buses.mmio.clone())?;
        vcpu.set_persist_context(persist.clone());
        let boot = (index == 0).then(|| {
            (
                kernel.protocol,
                kernel.entry,
                default_boot_info(kernel.protocol),
            )
        });
        vcpu.configure(&supported_cpuid, topology, boot)?;
        vcpus.push(vcpu);
    }

    let (handles, vcpu_exits, vcpu_exit_evt) = start_vcpus(vcpus, false)?;
    if let Some(start) = options.boot_timer {
        // Same level as the guest boot-time line, so a benchmark sees both by default.
        log::warn!(
            "Vcpus-started = {} us after process start",
            start.elapsed().as_micros()
        );
    }

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
        io_thread: Some(io_thread),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BootSourceConfig, CacheType, DriveConfig, ImageFormat, IoEngine};

    fn drive(id: &str, root: bool, partuuid: Option<&str>) -> DriveConfig {
        DriveConfig {
            drive_id: id.into(),
            path_on_host: Some(format!("/img/{id}")),
            is_root_device: root,
            partuuid: partuuid.map(str::to_owned),
            is_read_only: Some(!root),
            cache_type: CacheType::Unsafe,
            io_engine: IoEngine::Sync,
            image_format: ImageFormat::Raw,
            rate_limiter: None,
            socket: None,
        }
    }

    fn config(boot_args: Option<&str>, drives: Vec<DriveConfig>) -> VmConfig {
        VmConfig {
            boot_source: Some(BootSourceConfig {
                kernel_image_path: "/k".into(),
                boot_args: boot_args.map(str::to_owned),
                initrd_path: None,
            }),
            drives,
            ..Default::default()
        }
    }

    fn slots(n: usize) -> Vec<MmioSlot> {
        let mut a = MmioAllocator::default();
        (0..n)
            .map(|i| a.allocate(&format!("d{i}")).unwrap())
            .collect()
    }

    #[test]
    fn linux_command_line_lists_every_drive_and_the_root_device() {
        let c = config(
            Some("console=ttyS0 reboot=k"),
            vec![
                drive("scratch", false, None),
                drive("rootfs", true, None),
                drive("data", false, None),
            ],
        );
        // ACPI describes the devices: only root= is added.
        assert_eq!(
            kernel_cmdline(&c, &slots(3)),
            "console=ttyS0 reboot=k root=/dev/vdb rw"
        );
        let mut off = c.clone();
        off.boot_source.as_mut().unwrap().boot_args = Some("console=ttyS0 acpi=off".into());
        assert_eq!(
            kernel_cmdline(&off, &slots(3)),
            "console=ttyS0 acpi=off virtio_mmio.device=4K@0xd0000000:5 \
             virtio_mmio.device=4K@0xd0001000:6 virtio_mmio.device=4K@0xd0002000:7 \
             root=/dev/vdb rw"
        );
    }

    #[test]
    fn partuuid_root_and_default_arguments() {
        let c = config(None, vec![drive("rootfs", true, Some("0eaa91a0-01"))]);
        assert_eq!(
            kernel_cmdline(&c, &slots(1)),
            format!("{DEFAULT_BOOT_ARGS} root=PARTUUID=0eaa91a0-01 rw")
        );
        let none = config(Some("console=ttyS0"), Vec::new());
        assert_eq!(kernel_cmdline(&none, &[]), "console=ttyS0");
    }
}
