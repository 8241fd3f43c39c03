//! Executing actions on the VMM thread: the [`Vmm`] state (resources before boot, the running
//! VM after it, the metrics sink, the logger settings) and what each [`VmmAction`] does to it.

use std::time::Instant;

use crate::builder::{build_and_boot_with, BootHooks, BuildOptions, RunningVm, ThreadStartHook};
use crate::config::{
    LoggerConfig, MemBackendType, MetricsConfig, SnapshotCreateConfig, SnapshotLoadConfig, VmConfig,
};
use crate::logger::{self, LoggerSettings};
use crate::metrics::{self, MetricsSink};
use crate::persist::create::create_snapshot;
use crate::persist::restore::{load_snapshot, LoadOptions, MemoryBackend};
use crate::persist::SnapshotType;
use crate::resources::VmResources;
use crate::usage::{self, UsageMeter};

use super::response::{ActionError, InstanceInfo, InstanceState, VersionInfo, VmmData};
use super::{VmState, VmmAction};

fn no_balloon() -> ActionError {
    ActionError::Failed("No balloon device is configured.".into())
}

fn stats_disabled() -> ActionError {
    ActionError::Failed(
        "Balloon statistics are not enabled (stats_polling_interval_s was 0 when the balloon was configured).".into(),
    )
}

/// The name `GET /` reports.
pub const APP_NAME: &str = "xenia";

/// Everything the VMM thread owns, before and after boot.
pub struct Vmm {
    instance_id: String,
    resources: VmResources,
    vm: Option<RunningVm>,
    paused: bool,
    /// Set by a snapshot load that did not resume: the first resume kicks every queue.
    kick_on_resume: bool,
    metrics_sink: Option<MetricsSink>,
    build_options: BuildOptions,
    logger: LoggerSettings,
    /// Makes the hooks for the threads each boot starts.
    boot_hooks: Option<Box<dyn Fn() -> BootHooks>>,
    /// Runs on the VMM thread once the VM has started (its seccomp filter).
    after_start: Option<ThreadStartHook>,
    /// Set when the VMM cannot go on (the after-start hook failed): the loop exits.
    fatal: Option<String>,
    /// Usage metering (`GET /usage`, the `usage` object of metrics lines).
    usage: UsageMeter,
    /// The MMDS data store, made on first use (`PUT /mmds`, `--metadata`, a boot or restore
    /// with `mmds-config`); shared with the interfaces that serve it.
    mmds: Option<std::sync::Arc<std::sync::Mutex<mmds::Mmds>>>,
    /// Its size limit (`--mmds-size-limit`).
    mmds_limit: usize,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("instance_id", &self.instance_id)
            .field("resources", &self.resources)
            .field("vm", &self.vm)
            .field("paused", &self.paused)
            .finish_non_exhaustive()
    }
}

/// Why the VMM could not be set up from the command line and config file.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error(transparent)]
    Resources(#[from] crate::resources::ResourceError),
    #[error(transparent)]
    Start(#[from] crate::builder::StartError),
    #[error("the VMM thread could not finish starting: {0}")]
    AfterStart(String),
}

impl Vmm {
    /// A VMM with nothing started. `logger` is what the logger was configured with.
    pub fn new(
        instance_id: String,
        resources: VmResources,
        build_options: BuildOptions,
        logger: LoggerSettings,
    ) -> Self {
        // `new` runs on the VMM thread: its CPU clock is read from now on.
        usage::register_current(usage::ThreadRole::Vmm);
        let usage = UsageMeter::new(instance_id.clone());
        Self {
            usage,
            instance_id,
            resources,
            vm: None,
            paused: false,
            kick_on_resume: false,
            metrics_sink: None,
            build_options,
            logger,
            boot_hooks: None,
            after_start: None,
            fatal: None,
            mmds: None,
            mmds_limit: crate::cli::DEFAULT_MAX_PAYLOAD,
        }
    }

    /// Hooks for the threads the builder starts, made afresh for each boot attempt.
    pub fn set_boot_hooks(&mut self, make: Box<dyn Fn() -> BootHooks>) {
        self.boot_hooks = Some(make);
    }

    /// Runs once on the VMM thread right after the VM has started.
    pub fn set_after_start(&mut self, hook: ThreadStartHook) {
        self.after_start = Some(hook);
    }

    /// Why the VMM must stop, if it must.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    /// The running VM, once started.
    pub fn vm(&self) -> Option<&RunningVm> {
        self.vm.as_ref()
    }

    /// Gives up the VM without the orderly shutdown (joining its threads): for a VM whose
    /// vCPUs may be blocked forever, such as one whose Uffd page-fault handler died with a
    /// fault pending. Only before the process exits, which reclaims everything.
    pub fn abandon_vm(&mut self) {
        if let Some(vm) = self.vm.take() {
            std::mem::forget(vm);
        }
    }

    pub fn vm_mut(&mut self) -> Option<&mut RunningVm> {
        self.vm.as_mut()
    }

    /// Opens the metrics sink (from `--metrics-path`, the config file or `PUT /metrics`).
    pub fn open_metrics(&mut self, config: MetricsConfig) -> Result<(), VmmError> {
        if self.metrics_sink.is_some() {
            return Err(metrics::MetricsError::AlreadyConfigured.into());
        }
        self.metrics_sink = Some(MetricsSink::open(&config, &self.instance_id)?);
        self.resources.set_metrics(config)?;
        Ok(())
    }

    /// The boot hooks for one start or restore.
    fn hooks(&self) -> BootHooks {
        self.boot_hooks
            .as_ref()
            .map(|make| make())
            .unwrap_or_default()
    }

    /// Runs the after-start hook (the VMM thread's seccomp filter) once.
    fn after_start(&mut self) -> Result<(), VmmError> {
        if let Some(hook) = self.after_start.take() {
            if let Err(e) = hook() {
                self.fatal = Some(e.clone());
                return Err(VmmError::AfterStart(e));
            }
        }
        Ok(())
    }

    /// `PUT /snapshot/create`: the VM must be paused.
    fn create_snapshot(&mut self, params: &SnapshotCreateConfig) -> Result<(), ActionError> {
        self.running_vm()?;
        if !self.paused {
            return Err(ActionError::Failed(
                "Cannot create a snapshot of a running microVM: pause it first \
                 (PATCH /vm {\"state\": \"Paused\"})."
                    .into(),
            ));
        }
        // The counters as they stand (the VM is paused, so only xenia's own threads move).
        let usage = self.usage.save_state();
        let vm = self.running_vm()?;
        let start = Instant::now();
        let stats = create_snapshot(
            vm,
            self.resources.config(),
            &params.snapshot_path,
            &params.mem_file_path,
            params.snapshot_type,
            usage,
        )
        .map_err(|e| ActionError::Failed(format!("Cannot create the snapshot: {e}")))?;
        let latency = &metrics::global().latencies_us;
        match params.snapshot_type {
            SnapshotType::Full => latency.full_create_snapshot.set_duration(start.elapsed()),
            SnapshotType::Diff => latency.diff_create_snapshot.set_duration(start.elapsed()),
        }
        log::info!(
            "{:?} snapshot written in {} us: state {} bytes, memory {} of {} bytes",
            params.snapshot_type,
            start.elapsed().as_micros(),
            stats.state_bytes,
            stats.memory.bytes_written,
            stats.memory.file_len
        );
        Ok(())
    }

    /// `PUT /snapshot/load`: only on a process where nothing but the logger and metrics was
    /// configured. On failure nothing is kept: the VMM stays "Not started".
    fn load_snapshot(&mut self, params: &SnapshotLoadConfig) -> Result<(), ActionError> {
        self.pre_boot()?;
        let process_only = VmConfig {
            logger: self.resources.config().logger.clone(),
            metrics: self.resources.config().metrics.clone(),
            ..VmConfig::default()
        };
        if self.resources.config() != &process_only {
            return Err(ActionError::Failed(
                "Loading a snapshot is only allowed on a fresh microVM: resources other than \
                 the logger and metrics were already configured."
                    .into(),
            ));
        }
        let backend = match (&params.mem_backend, &params.mem_file_path) {
            (Some(b), _) if b.backend_type == MemBackendType::Uffd => {
                MemoryBackend::Uffd(b.backend_path.clone())
            }
            (Some(b), _) => MemoryBackend::File(b.backend_path.clone()),
            (None, Some(p)) => MemoryBackend::File(p.clone()),
            (None, None) => {
                return Err(ActionError::Failed(
                    "mem_backend: exactly one of mem_backend and mem_file_path must be given"
                        .into(),
                ))
            }
        };
        let options = LoadOptions {
            snapshot_path: params.snapshot_path.clone(),
            backend,
            track_dirty_pages: params.dirty_tracking(),
            network_overrides: params
                .network_overrides
                .iter()
                .map(|o| (o.iface_id.clone(), o.host_dev_name.clone()))
                .collect(),
            vsock_override: params.vsock_override.as_ref().map(|o| o.uds_path.clone()),
            clock_realtime: params.clock_realtime,
        };
        let start = Instant::now();
        let hooks = self.hooks();
        let (vm, mut config, usage) =
            load_snapshot(&options, self.build_options_with_mmds()?, hooks)
                .map_err(|e| ActionError::Failed(format!("Cannot load the snapshot: {e}")))?;
        // The restored VM bills on from the snapshot's counters under a new identity (this
        // process's usage_id, the snapshot's as parent). Validated with the state file.
        if let Some(state) = &usage {
            self.usage
                .continue_from(state)
                .map_err(|e| ActionError::Failed(format!("Cannot load the snapshot: {e}")))?;
        }
        config.logger = process_only.logger;
        config.metrics = process_only.metrics;
        if params.resume_vm {
            kick_queues(&vm);
            vm.resume().map_err(|e| {
                ActionError::Internal(format!("cannot resume the restored VM: {e}"))
            })?;
        }
        self.kick_on_resume = !params.resume_vm;
        metrics::global()
            .latencies_us
            .load_snapshot
            .set_duration(start.elapsed());
        self.resources = VmResources::from_config(config);
        self.vm = Some(vm);
        self.paused = !params.resume_vm;
        self.start_metering(self.paused);
        log::info!(
            "snapshot `{}` loaded in {} us; the microVM is {}",
            params.snapshot_path,
            start.elapsed().as_micros(),
            if self.paused { "paused" } else { "running" }
        );
        self.after_start()
            .map_err(|e| ActionError::Internal(e.to_string()))?;
        Ok(())
    }

    /// Builds and boots the VM from the gathered resources. On failure nothing is left
    /// running and the resources are unchanged, so the caller may fix them and try again.
    pub fn start(&mut self) -> Result<(), VmmError> {
        self.resources.check_startable()?;
        let hooks = self.hooks();
        let options = self
            .build_options_with_mmds()
            .map_err(|e| crate::builder::StartError::Mmds(e.to_string()))?;
        let vm = build_and_boot_with(self.resources.config(), options, hooks)?;
        log::info!("the microVM is running");
        self.vm = Some(vm);
        self.start_metering(false);
        self.after_start()
    }

    /// Starts the usage meter on the VM just built or restored (`paused`: restored without
    /// resuming). A restore calls [`UsageMeter::continue_from`] with the snapshot's
    /// [`usage::UsageState`] first, so the counters continue under a new identity.
    fn start_metering(&mut self, paused: bool) {
        let Some(vm) = self.vm.as_ref() else {
            return;
        };
        let mem_bytes = vm_memory::GuestMemoryBackend::iter(&vm.memory)
            .map(vm_memory::GuestMemoryRegion::len)
            .sum();
        self.usage.vm_started(
            vm.memory.clone(),
            mem_bytes,
            vm.drives
                .iter()
                .map(|d| (d.drive_id.clone(), d.counters()))
                .collect(),
            vm.nets
                .iter()
                .map(|n| (n.iface_id.clone(), n.counters()))
                .collect(),
        );
        if let Some(v) = &vm.vsock {
            self.usage.set_vsock_source(v.counters.clone());
        }
        self.usage.set_paused(paused);
    }

    /// Writes a metrics line if metrics are configured (the periodic timer).
    pub fn flush_metrics_if_configured(&mut self) {
        if let Err(e) = self.flush_metrics(None) {
            log::warn!("{e}");
        }
    }

    /// Writes the last metrics line, its usage record marked `final` with `reason`
    /// (`guest-shutdown`, `sigterm`, `start-failed`, ...). Before boot its counters are null.
    pub fn flush_final_metrics(&mut self, reason: &str) {
        if let Err(e) = self.flush_metrics(Some(reason)) {
            log::warn!("{e}");
        }
    }

    fn flush_metrics(&mut self, exit_reason: Option<&str>) -> Result<(), metrics::MetricsError> {
        if self.metrics_sink.is_none() {
            return Ok(());
        }
        let record = self.usage_record(exit_reason);
        let value = serde_json::to_value(record).ok();
        match self.metrics_sink.as_mut() {
            Some(sink) => sink.flush_with_usage(metrics::global(), value),
            None => Ok(()),
        }
    }

    /// The usage record now (`GET /usage`); `exit_reason` marks it final.
    pub fn usage_record(&mut self, exit_reason: Option<&str>) -> usage::UsageRecord {
        let state = match self.state() {
            InstanceState::NotStarted => "Not started",
            InstanceState::Running => "Running",
            InstanceState::Paused => "Paused",
        };
        self.usage.record(state, exit_reason)
    }

    /// Samples resident guest memory (the usage timer).
    pub fn sample_usage(&mut self) {
        self.usage.sample();
    }

    /// The usage meter: the snapshot code saves [`usage::UsageMeter::save_state`] with a
    /// snapshot and calls [`usage::UsageMeter::continue_from`] before a restored VM starts.
    pub fn usage_meter(&mut self) -> &mut UsageMeter {
        &mut self.usage
    }

    fn state(&self) -> InstanceState {
        match (&self.vm, self.paused) {
            (None, _) => InstanceState::NotStarted,
            (Some(_), false) => InstanceState::Running,
            (Some(_), true) => InstanceState::Paused,
        }
    }

    fn pre_boot(&self) -> Result<(), ActionError> {
        match self.vm {
            None => Ok(()),
            Some(_) => Err(ActionError::NotAllowedAfterBoot),
        }
    }

    fn running_vm(&self) -> Result<&RunningVm, ActionError> {
        self.vm.as_ref().ok_or(ActionError::NotAllowedBeforeBoot)
    }

    /// Carries out one API action.
    pub fn execute(&mut self, action: VmmAction) -> Result<VmmData, ActionError> {
        use VmmAction as A;
        let failed = |e: &dyn std::fmt::Display| ActionError::Failed(e.to_string());
        match action {
            A::GetInstanceInfo => Ok(VmmData::InstanceInfo(InstanceInfo {
                id: self.instance_id.clone(),
                state: self.state(),
                vmm_version: env!("CARGO_PKG_VERSION").to_owned(),
                app_name: APP_NAME.to_owned(),
            })),
            A::GetVersion => Ok(VmmData::Version(VersionInfo {
                firecracker_version: env!("CARGO_PKG_VERSION").to_owned(),
            })),
            A::GetFullConfig => Ok(VmmData::FullConfig(Box::new(
                self.resources.config().clone(),
            ))),
            A::GetMachineConfig => Ok(VmmData::MachineConfig(self.resources.machine_config())),
            A::GetUsage => Ok(VmmData::Usage(Box::new(self.usage_record(None)))),
            A::FlushMetrics => {
                // Without a sink there is nothing to write, and Firecracker answers 204 then
                // too (clients call FlushMetrics in their stop routine whether or not they
                // configured metrics), before boot and after.
                self.flush_metrics(None).map_err(|e| failed(&e))?;
                Ok(VmmData::Empty)
            }
            A::PutBootSource(boot) => {
                self.pre_boot()?;
                self.resources
                    .set_boot_source(boot)
                    .map_err(|e| failed(&e))?;
                Ok(VmmData::Empty)
            }
            A::PutMachineConfig(machine) => {
                self.pre_boot()?;
                self.resources
                    .set_machine_config(machine)
                    .map_err(|e| failed(&e))?;
                Ok(VmmData::Empty)
            }
            A::PutCpuConfig(template) => {
                self.pre_boot()?;
                self.resources
                    .set_cpu_config(template)
                    .map_err(|e| failed(&e))?;
                Ok(VmmData::Empty)
            }
            A::PatchMachineConfig(update) => {
                self.pre_boot()?;
                self.resources
                    .patch_machine_config(&update)
                    .map_err(|e| failed(&e))?;
                Ok(VmmData::Empty)
            }
            A::PutLogger(config) => {
                self.pre_boot()?;
                self.configure_logger(config)?;
                Ok(VmmData::Empty)
            }
            A::PutMetrics(config) => {
                self.pre_boot()?;
                self.open_metrics(config).map_err(|e| failed(&e))?;
                Ok(VmmData::Empty)
            }
            A::PutSerial(serial) => {
                self.pre_boot()?;
                self.resources.set_serial(serial).map_err(|e| failed(&e))?;
                Ok(VmmData::Empty)
            }
            A::PutDrive(drive) => {
                self.pre_boot()?;
                self.resources.set_drive(drive).map_err(|e| failed(&e))?;
                Ok(VmmData::Empty)
            }
            A::PutEntropy(entropy) => {
                self.pre_boot()?;
                self.resources
                    .set_entropy(entropy)
                    .map_err(|e| failed(&e))?;
                Ok(VmmData::Empty)
            }
            A::PutVsock(vsock) => {
                self.pre_boot()?;
                self.resources.set_vsock(vsock).map_err(|e| failed(&e))?;
                Ok(VmmData::Empty)
            }
            A::PutBalloon(balloon) => {
                self.pre_boot()?;
                self.resources
                    .set_balloon(balloon)
                    .map_err(|e| failed(&e))?;
                Ok(VmmData::Empty)
            }
            A::GetBalloonConfig => Ok(VmmData::BalloonConfig(
                self.resources
                    .config()
                    .balloon
                    .clone()
                    .ok_or_else(no_balloon)?,
            )),
            A::PatchBalloon(update) => {
                let current = self.resources.config().balloon.clone();
                let Some(current) = current else {
                    return Err(no_balloon());
                };
                let machine = self.resources.machine_config();
                crate::config::check_balloon_amount(update.amount_mib, &machine)?;
                if let Some(vm) = &self.vm {
                    vm.balloon
                        .as_ref()
                        .ok_or_else(no_balloon)?
                        .update_target(update.amount_mib)
                        .map_err(|e| failed(&e))?;
                }
                self.record_balloon(crate::config::BalloonDeviceConfig {
                    amount_mib: update.amount_mib,
                    ..current
                });
                Ok(VmmData::Empty)
            }
            A::GetBalloonStats => {
                let config = self.resources.config().balloon.clone();
                let config = config.ok_or_else(no_balloon)?;
                if config.stats_polling_interval_s == 0 {
                    return Err(stats_disabled());
                }
                let vm = self.running_vm()?;
                let stats = vm
                    .balloon
                    .as_ref()
                    .ok_or_else(no_balloon)?
                    .statistics()
                    .map_err(|e| failed(&e))?;
                Ok(VmmData::BalloonStats(stats))
            }
            A::PatchBalloonStats(update) => {
                let current = self.resources.config().balloon.clone();
                let current = current.ok_or_else(no_balloon)?;
                if let Some(vm) = &self.vm {
                    vm.balloon
                        .as_ref()
                        .ok_or_else(no_balloon)?
                        .update_stats_interval(update.stats_polling_interval_s)
                        .map_err(|e| failed(&e))?;
                }
                self.record_balloon(crate::config::BalloonDeviceConfig {
                    stats_polling_interval_s: update.stats_polling_interval_s,
                    ..current
                });
                Ok(VmmData::Empty)
            }
            A::PutNetworkInterface(iface) => {
                self.pre_boot()?;
                self.resources
                    .set_network_interface(iface)
                    .map_err(|e| failed(&e))?;
                Ok(VmmData::Empty)
            }
            A::StartInstance => {
                self.pre_boot()?;
                self.start()
                    .map_err(|e| ActionError::Failed(format!("Cannot start the microVM: {e}")))?;
                Ok(VmmData::Empty)
            }
            A::PatchVmState(state) => {
                let kick = state == VmState::Resumed && self.kick_on_resume;
                let vm = self.running_vm()?;
                let start = Instant::now();
                if kick {
                    kick_queues(vm);
                }
                match state {
                    VmState::Paused => vm.pause(),
                    VmState::Resumed => vm.resume(),
                }
                .map_err(|e| ActionError::Internal(e.to_string()))?;
                let latency = &metrics::global().latencies_us;
                match state {
                    VmState::Paused => latency.pause_vm.set_duration(start.elapsed()),
                    VmState::Resumed => latency.resume_vm.set_duration(start.elapsed()),
                }
                self.paused = state == VmState::Paused;
                self.usage.set_paused(self.paused);
                self.kick_on_resume &= !kick;
                log::info!(
                    "the microVM is {}",
                    if self.paused { "paused" } else { "running" }
                );
                Ok(VmmData::Empty)
            }
            A::SendCtrlAltDel => {
                self.running_vm()?
                    .send_ctrl_alt_del()
                    .map_err(|e| failed(&format!("Cannot send Ctrl-Alt-Del: {e}")))?;
                Ok(VmmData::Empty)
            }
            A::PatchDrive(update) => {
                self.running_vm()?
                    .update_drive(&update)
                    .map_err(|e| failed(&e))?;
                self.resources.record_drive_update(&update);
                Ok(VmmData::Empty)
            }
            A::CreateSnapshot(params) => {
                self.create_snapshot(&params)?;
                Ok(VmmData::Empty)
            }
            A::LoadSnapshot(params) => {
                self.load_snapshot(&params)?;
                Ok(VmmData::Empty)
            }
            A::PutMmdsConfig(_) | A::PutMmds(_) | A::PatchMmds(_) | A::GetMmds => {
                self.execute_mmds(action)
            }
            A::PatchNetworkInterface(update) => {
                self.running_vm()?
                    .update_network_interface(&update)
                    .map_err(|e| failed(&e))?;
                self.resources.record_network_interface_update(&update);
                Ok(VmmData::Empty)
            }
        }
    }

    /// Keeps the exported configuration in step with what the balloon now does.
    fn record_balloon(&mut self, balloon: crate::config::BalloonDeviceConfig) {
        if let Some(Err(e)) = self.resources.update_balloon(|b| *b = balloon) {
            // Checked before the device was changed; a failure here is a bug.
            log::error!("balloon: cannot record the update: {e}");
        }
    }

    /// `PUT /logger`: fields given replace the current settings, the rest stay.
    fn configure_logger(&mut self, config: LoggerConfig) -> Result<(), ActionError> {
        let mut next = self.logger.clone();
        if let Some(level) = config.level {
            next.level = level;
        }
        if let Some(v) = config.show_level {
            next.show_level = v;
        }
        if let Some(v) = config.show_log_origin {
            next.show_origin = v;
        }
        if config.log_path.is_some() {
            next.log_path = config.log_path.clone();
        }
        if config.module.is_some() {
            next.module = config.module.clone();
        }
        logger::configure(next.clone()).map_err(|e| ActionError::Failed(e.to_string()))?;
        self.logger = next;
        self.resources
            .set_logger(config)
            .map_err(|e| ActionError::Failed(e.to_string()))?;
        Ok(())
    }
}

/// After a restore, before the guest runs again: notify every virtio queue and re-raise
/// pending interrupts, so a guest that suppressed notifications (EVENT_IDX) while the
/// snapshot was taken is not left waiting for a device that waits for it.
fn kick_queues(vm: &RunningVm) {
    match vm.devices().kick_all_queues() {
        Ok(n) => log::debug!("restored VM: {n} virtio queues kicked"),
        Err(e) => log::warn!("restored VM: {e}"),
    }
}

#[path = "mmds.rs"]
mod mmds_actions;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MachineConfig, SerialConfig};

    fn vmm() -> Vmm {
        Vmm::new(
            "vm-t".into(),
            VmResources::default(),
            BuildOptions::default(),
            LoggerSettings::default(),
        )
    }

    #[test]
    fn instance_info_before_boot() {
        let mut v = vmm();
        let Ok(VmmData::InstanceInfo(info)) = v.execute(VmmAction::GetInstanceInfo) else {
            panic!("no instance info");
        };
        assert_eq!(info.state, InstanceState::NotStarted);
        assert_eq!(
            (info.id.as_str(), info.app_name.as_str()),
            ("vm-t", "xenia")
        );
    }

    #[test]
    fn post_boot_actions_are_refused_before_boot() {
        let mut v = vmm();
        for a in [
            VmmAction::PatchVmState(VmState::Paused),
            VmmAction::SendCtrlAltDel,
        ] {
            assert!(matches!(
                v.execute(a),
                Err(ActionError::NotAllowedBeforeBoot)
            ));
        }
    }

    #[test]
    fn flush_metrics_without_a_sink_succeeds_and_writes_nothing() {
        let mut v = vmm();
        assert!(matches!(
            v.execute(VmmAction::FlushMetrics),
            Ok(VmmData::Empty)
        ));
        assert!(v.metrics_sink.is_none());
    }

    #[test]
    fn pre_boot_settings_show_in_the_full_config() {
        let mut v = vmm();
        let m = MachineConfig {
            vcpu_count: 2,
            ..Default::default()
        };
        v.execute(VmmAction::PutMachineConfig(m.clone())).unwrap();
        v.execute(VmmAction::PutSerial(SerialConfig::default()))
            .unwrap();
        let Ok(VmmData::FullConfig(c)) = v.execute(VmmAction::GetFullConfig) else {
            panic!("no config");
        };
        assert_eq!(c.machine_config, Some(m));
        assert!(c.serial.is_some());
    }

    #[test]
    fn start_without_boot_source_fails_and_leaves_the_vmm_usable() {
        let mut v = vmm();
        let e = v.execute(VmmAction::StartInstance).unwrap_err();
        assert!(e.to_string().contains("boot-source"), "{e}");
        assert!(v.vm().is_none());
        assert!(v
            .execute(VmmAction::PutMachineConfig(MachineConfig::default()))
            .is_ok());
    }
}
