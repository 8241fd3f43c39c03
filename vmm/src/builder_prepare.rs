//! The part of a cold boot that overlaps the memory slot's registration (see
//! [`super::build_and_boot_with`]).

use super::*;

/// What the VMM thread sets up while the memory slot is being registered.
pub(super) struct Prepared {
    pub(super) legacy: LegacyDevices,
    pub(super) drives: Vec<BlockDevice>,
    pub(super) nets: Vec<NetDevice>,
    pub(super) entropy: Option<EntropyDevice>,
    pub(super) balloon: Option<BalloonDevice>,
    pub(super) vsock: Option<VsockDevice>,
    pub(super) io: Option<IoThread>,
    pub(super) acpi: AcpiDevices,
    pub(super) vcpus: Vec<Vcpu>,
    pub(super) persist: Arc<VcpuPersistContext>,
}

/// Everything of a cold boot but the memory slot and the threads: CPUID, devices, the
/// kernel and boot tables in guest memory, configured vCPUs.
pub(super) fn prepare_guest(
    config: &VmConfig,
    options: BuildOptions,
    kvm: &KvmContext,
    vm: &Vm,
    memory: &GuestMemoryMmap,
    boot_source: &crate::config::BootSourceConfig,
) -> Result<Prepared, StartError> {
    let machine = config.machine_config.clone().unwrap_or_default();
    let mem_size = machine.mem_size_bytes();
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
    boot_phases::mark("cpuid");

    let Devices {
        mut buses,
        legacy,
        drives,
        nets,
        entropy,
        balloon,
        vsock,
        io,
    } = create_devices(config, vm, memory, options)?;

    let slots: Vec<MmioSlot> = drives
        .iter()
        .map(|d| d.mmio.slot)
        .chain(nets.iter().map(|n| n.mmio.slot))
        .chain(entropy.iter().map(|e| e.mmio.slot))
        .chain(balloon.iter().map(|b| b.mmio.slot))
        .chain(vsock.iter().map(|v| v.mmio.slot))
        .collect();
    let poweroff = legacy.poweroff_trigger().map_err(StartError::ExitEvent)?;
    let acpi = attach_acpi(
        vm,
        &mut buses,
        memory,
        poweroff,
        machine.vcpu_count,
        slots.iter().map(MmioSlot::acpi_info).collect(),
    )?;
    register_acpi_metrics(&acpi, metrics::global());
    boot_phases::mark("devices");

    let kernel = load_kernel(memory, &boot_source.kernel_image_path)?;
    log::info!(
        "kernel `{}` loaded: {:?} entry at {:#x}",
        boot_source.kernel_image_path,
        kernel.protocol,
        kernel.entry
    );
    let args = kernel_cmdline(config, &slots);
    log::debug!("kernel command line: {args}");
    let cmdline_len = load_cmdline(memory, &args)?;
    let initrd = match &boot_source.initrd_path {
        Some(path) => Some(load_initrd(memory, mem_size, kernel.kernel_end, path)?),
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
        EntryProtocol::Linux64 => write_zero_page(memory, &info)?,
        EntryProtocol::Pvh => write_pvh_info(memory, &info)?,
    }
    write_boot_tables(memory, kernel.protocol)?;
    setup_mptable(memory, machine.vcpu_count)?;
    boot_phases::mark("kernel_loaded");

    let persist = Arc::new(VcpuPersistContext::new(&kvm.kvm, vm.fd()));
    let topology = Topology::new(machine.vcpu_count, machine.smt);
    let mut vcpus = Vec::with_capacity(usize::from(machine.vcpu_count));
    for index in 0..machine.vcpu_count {
        let mut vcpu = Vcpu::new(vm, index, buses.pio.clone(), buses.mmio.clone())?;
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
    boot_phases::mark("vcpus_configured");
    Ok(Prepared {
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
    })
}
