//! A vCPU's saved state: everything KVM keeps for it, as plain data, and how it is read from
//! and written back to a `VcpuFd`.
//!
//! Order matters. Saving: MP state first (KVM_GET_MP_STATE flushes pending APIC events into
//! the state it reports), the vCPU events last. Restoring: CPUID (KVM checks XSAVE and MSRs
//! against it), the TSC frequency, MP state, registers, sregs, xsave, xcrs, debug registers,
//! LAPIC, MSRs (IA32_TSC before IA32_TSC_DEADLINE, whose value KVM interprets against the
//! TSC), vCPU events. `KVM_KVMCLOCK_CTRL` follows, so a guest using kvmclock knows it was
//! stopped and its soft-lockup watchdog does not fire.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, Xsave, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// `MSR_IA32_TSC`: restored first among the MSRs.
pub const MSR_IA32_TSC: u32 = 0x10;
/// `MSR_IA32_TSC_DEADLINE`: restored last, after the TSC it is compared with.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// KVM's paravirtual MSR range (kvmclock, async PF, steal time, PV EOI, ...): saved whole,
/// whatever KVM_GET_MSR_INDEX_LIST says, because a missed one (async PF) once broke restores.
pub const KVM_PV_MSRS: std::ops::RangeInclusive<u32> = 0x4b56_4d00..=0x4b56_4dff;
/// MSRs per KVM_GET_MSRS call: KVM refuses 256 or more (MAX_IO_MSRS) with E2BIG.
const MSR_CHUNK: usize = 200;
/// Bound on saved MSRs per vCPU (KVM knows a few hundred).
pub const MAX_MSRS: usize = 1024;
/// Bound on the xsave area, in 32-bit words (64 KiB; AMX needs ~11 KiB).
pub const MAX_XSAVE_WORDS: usize = 16 * 1024;
/// The legacy `kvm_xsave` area, in words.
const XSAVE_REGION_WORDS: usize = 1024;
/// A TSC frequency further than this from the host's (parts per million) needs scaling.
pub const TSC_TOLERANCE_PPM: u64 = 250;

/// What one vCPU needs to continue where it stopped.
#[derive(Clone, Serialize, Deserialize)]
pub struct VcpuState {
    pub index: u8,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// The XSAVE area (KVM_GET_XSAVE2 when the host has it, else KVM_GET_XSAVE), in words.
    pub xsave: Vec<u32>,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// In restore order: IA32_TSC first, IA32_TSC_DEADLINE last.
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
    /// The guest's TSC frequency; `None` when KVM could not tell.
    pub tsc_khz: Option<u32>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("index", &self.index)
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("cpuid_entries", &self.cpuid.len())
            .field("msrs", &self.msrs.len())
            .field("xsave_words", &self.xsave.len())
            .field("tsc_khz", &self.tsc_khz)
            .finish()
    }
}

/// Errors while saving or restoring a vCPU; each names the step.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("vCPU {index}: {what} failed: {source}")]
    Kvm {
        index: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: cannot build the {what} list: {source}")]
    Fam {
        index: u8,
        what: &'static str,
        source: vmm_sys_util::fam::Error,
    },
    #[error(
        "vCPU {index}: KVM refused to set MSR {msr:#x} ({set} of {total} set) and this host \
         holds a different value"
    )]
    MsrRefused {
        index: u8,
        msr: u32,
        set: usize,
        total: usize,
    },
    #[error(
        "vCPU {index}: the snapshot's TSC runs at {saved_khz} kHz, this host's at {host_khz} kHz, \
         and KVM cannot scale the TSC here (no KVM_CAP_TSC_CONTROL); restore on a host with the \
         same TSC frequency"
    )]
    TscUnscalable {
        index: u8,
        saved_khz: u32,
        host_khz: u32,
    },
    #[error("vCPU {index}: invalid state: {reason}")]
    Invalid { index: u8, reason: String },
}

/// Host facts the save and restore paths need, found once per VM.
#[derive(Debug, Clone)]
pub struct VcpuPersistContext {
    /// `KVM_CAP_XSAVE2`'s size in bytes (0 when the host lacks it).
    pub xsave2_size: usize,
    /// MSRs to try saving: KVM's index list plus the whole paravirtual range.
    pub msr_candidates: Vec<u32>,
    /// KVM can set a guest TSC frequency (`KVM_CAP_TSC_CONTROL`).
    pub tsc_control: bool,
}

impl VcpuPersistContext {
    pub fn new(kvm: &kvm_ioctls::Kvm, vm: &kvm_ioctls::VmFd) -> Self {
        let size = vm.check_extension_int(kvm_ioctls::Cap::Xsave2);
        let mut msrs: Vec<u32> = kvm
            .get_msr_index_list()
            .map(|l| l.as_slice().to_vec())
            .unwrap_or_default();
        msrs.extend(KVM_PV_MSRS);
        Self {
            xsave2_size: usize::try_from(size).unwrap_or(0),
            msr_candidates: order_msrs(msrs),
            tsc_control: vm.check_extension(kvm_ioctls::Cap::TscControl),
        }
    }
}

/// Dedups `msrs` and orders them for restore: IA32_TSC first, IA32_TSC_DEADLINE last.
pub fn order_msrs(mut msrs: Vec<u32>) -> Vec<u32> {
    msrs.sort_unstable();
    msrs.dedup();
    let rank = |m: &u32| match *m {
        MSR_IA32_TSC => 0,
        MSR_IA32_TSC_DEADLINE => 2,
        _ => 1,
    };
    // A stable sort keeps KVM's numeric order inside each rank.
    msrs.sort_by_key(rank);
    msrs
}

fn kvm_err(index: u8, what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError::Kvm {
        index,
        what,
        source,
    }
}

/// Reads every MSR of `candidates` KVM will give. KVM_GET_MSRS stops at the first MSR it
/// cannot read and returns how many it read: skip that one and go on.
fn read_msrs(
    fd: &VcpuFd,
    index: u8,
    candidates: &[u32],
) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(candidates.len());
    let mut rest = candidates;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&i| kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|source| VcpuStateError::Fam {
            index,
            what: "MSR",
            source,
        })?;
        let n = fd
            .get_msrs(&mut msrs)
            .map_err(kvm_err(index, "KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..n.min(chunk.len())]);
        // Skip the MSR that stopped KVM (if any).
        let consumed = if n < chunk.len() { n + 1 } else { n };
        rest = &rest[consumed..];
    }
    if out.len() > MAX_MSRS {
        out.truncate(MAX_MSRS);
    }
    Ok(out)
}

/// Saves a vCPU that is outside KVM_RUN (paused). Call on the vCPU's own thread after a
/// KVM_RUN with `immediate_exit` set, so that an I/O exit handled last has completed.
pub fn save_vcpu(
    fd: &VcpuFd,
    index: u8,
    ctx: &VcpuPersistContext,
) -> Result<VcpuState, VcpuStateError> {
    let e = |what| kvm_err(index, what);
    let mp_state = fd.get_mp_state().map_err(e("KVM_GET_MP_STATE"))?;
    let regs = fd.get_regs().map_err(e("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(e("KVM_GET_SREGS"))?;
    let xsave = if ctx.xsave2_size > std::mem::size_of::<kvm_xsave>() {
        let extra = (ctx.xsave2_size - std::mem::size_of::<kvm_xsave>()).div_ceil(4);
        let mut area = Xsave::new(extra).map_err(|source| VcpuStateError::Fam {
            index,
            what: "xsave",
            source,
        })?;
        // SAFETY: `area` holds kvm_xsave plus `extra` words, at least KVM_CAP_XSAVE2's size,
        // which is what KVM_GET_XSAVE2 writes (no feature is enabled later by arch_prctl).
        unsafe { fd.get_xsave2(&mut area) }.map_err(e("KVM_GET_XSAVE2"))?;
        let mut words = area.as_fam_struct_ref().xsave.region.to_vec();
        words.extend_from_slice(area.as_slice());
        words
    } else {
        fd.get_xsave().map_err(e("KVM_GET_XSAVE"))?.region.to_vec()
    };
    let xcrs = fd.get_xcrs().map_err(e("KVM_GET_XCRS"))?;
    let debug_regs = fd.get_debug_regs().map_err(e("KVM_GET_DEBUGREGS"))?;
    let lapic = fd.get_lapic().map_err(e("KVM_GET_LAPIC"))?;
    let msrs = read_msrs(fd, index, &ctx.msr_candidates)?;
    let cpuid = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(e("KVM_GET_CPUID2"))?
        .as_slice()
        .to_vec();
    let tsc_khz = fd.get_tsc_khz().ok();
    let events = fd.get_vcpu_events().map_err(e("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        index,
        cpuid,
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debug_regs,
        lapic,
        msrs,
        events,
        tsc_khz,
    })
}

impl VcpuState {
    /// Shape checks that need no KVM: bounds on every list, MSR order.
    pub fn validate(&self, index: u8) -> Result<(), VcpuStateError> {
        let invalid = |reason: String| VcpuStateError::Invalid { index, reason };
        if self.index != index {
            return Err(invalid(format!("saved as vCPU {}", self.index)));
        }
        if self.cpuid.is_empty() || self.cpuid.len() > KVM_MAX_CPUID_ENTRIES {
            return Err(invalid(format!(
                "{} CPUID entries (1..={KVM_MAX_CPUID_ENTRIES} allowed)",
                self.cpuid.len()
            )));
        }
        if self.msrs.len() > MAX_MSRS {
            return Err(invalid(format!(
                "{} MSRs (at most {MAX_MSRS})",
                self.msrs.len()
            )));
        }
        if self.xsave.len() < XSAVE_REGION_WORDS || self.xsave.len() > MAX_XSAVE_WORDS {
            return Err(invalid(format!(
                "xsave area of {} words ({XSAVE_REGION_WORDS}..={MAX_XSAVE_WORDS} allowed)",
                self.xsave.len()
            )));
        }
        let tsc_pos = self.msrs.iter().position(|m| m.index == MSR_IA32_TSC);
        let deadline_pos = self
            .msrs
            .iter()
            .position(|m| m.index == MSR_IA32_TSC_DEADLINE);
        if let (Some(t), Some(d)) = (tsc_pos, deadline_pos) {
            if d < t {
                return Err(invalid(
                    "IA32_TSC_DEADLINE is listed before IA32_TSC".into(),
                ));
            }
        }
        if self.tsc_khz == Some(0) {
            return Err(invalid("a TSC frequency of 0 kHz".into()));
        }
        Ok(())
    }

    /// The MSRs as they are written back: a zero TSC deadline becomes the saved TSC, so a
    /// LAPIC timer in TSC-deadline mode that was about to be armed fires once at resume
    /// instead of never (a guest waiting for that tick would hang).
    fn msrs_for_restore(&self) -> Vec<kvm_msr_entry> {
        let tsc = self
            .msrs
            .iter()
            .find(|m| m.index == MSR_IA32_TSC)
            .map(|m| m.data);
        self.msrs
            .iter()
            .map(|m| match (m.index, tsc) {
                (MSR_IA32_TSC_DEADLINE, Some(tsc)) if m.data == 0 => {
                    kvm_msr_entry { data: tsc, ..*m }
                }
                _ => *m,
            })
            .collect()
    }
}

/// Whether two TSC frequencies differ by more than [`TSC_TOLERANCE_PPM`].
pub fn tsc_needs_scaling(saved_khz: u32, host_khz: u32) -> bool {
    let diff = u64::from(saved_khz.abs_diff(host_khz));
    diff * 1_000_000 > u64::from(host_khz) * TSC_TOLERANCE_PPM
}

/// Writes `state` into a vCPU that has not run yet.
pub fn restore_vcpu(
    fd: &VcpuFd,
    state: &VcpuState,
    ctx: &VcpuPersistContext,
) -> Result<(), VcpuStateError> {
    let index = state.index;
    state.validate(index)?;
    let e = |what| kvm_err(index, what);
    let fam = |what| {
        move |source| VcpuStateError::Fam {
            index,
            what,
            source,
        }
    };
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(fam("CPUID"))?;
    fd.set_cpuid2(&cpuid).map_err(e("KVM_SET_CPUID2"))?;
    if let Some(saved_khz) = state.tsc_khz {
        if let Ok(host_khz) = fd.get_tsc_khz() {
            if tsc_needs_scaling(saved_khz, host_khz) {
                if !ctx.tsc_control {
                    return Err(VcpuStateError::TscUnscalable {
                        index,
                        saved_khz,
                        host_khz,
                    });
                }
                fd.set_tsc_khz(saved_khz).map_err(e("KVM_SET_TSC_KHZ"))?;
                log::info!("vCPU {index}: TSC scaled from {host_khz} kHz to {saved_khz} kHz");
            }
        }
    }
    fd.set_mp_state(state.mp_state)
        .map_err(e("KVM_SET_MP_STATE"))?;
    fd.set_regs(&state.regs).map_err(e("KVM_SET_REGS"))?;
    fd.set_sregs(&state.sregs).map_err(e("KVM_SET_SREGS"))?;
    restore_xsave(fd, index, &state.xsave, ctx)?;
    fd.set_xcrs(&state.xcrs).map_err(e("KVM_SET_XCRS"))?;
    fd.set_debug_regs(&state.debug_regs)
        .map_err(e("KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&state.lapic).map_err(e("KVM_SET_LAPIC"))?;
    let entries = state.msrs_for_restore();
    set_msrs_checked(fd, index, &entries)?;
    fd.set_vcpu_events(&state.events)
        .map_err(e("KVM_SET_VCPU_EVENTS"))?;
    match fd.kvmclock_ctrl() {
        Ok(()) => {}
        // EINVAL: the guest has not enabled kvmclock; nothing to tell it.
        Err(err) if err.errno() == libc::EINVAL => {}
        Err(err) => log::debug!("vCPU {index}: KVM_KVMCLOCK_CTRL: {err}"),
    }
    Ok(())
}

/// KVM_SET_MSRS in order. KVM stops at an MSR it will not set; such an MSR is accepted only
/// if it is read-only and already holds the saved value on this host (PVM exposes constant
/// information MSRs in the paravirtual range this way); otherwise the restore fails naming it.
fn set_msrs_checked(
    fd: &VcpuFd,
    index: u8,
    entries: &[kvm_msr_entry],
) -> Result<(), VcpuStateError> {
    let fam = |source| VcpuStateError::Fam {
        index,
        what: "MSR",
        source,
    };
    let mut rest = entries;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let msrs = Msrs::from_entries(chunk).map_err(fam)?;
        let set = fd
            .set_msrs(&msrs)
            .map_err(kvm_err(index, "KVM_SET_MSRS"))?
            .min(chunk.len());
        if set == chunk.len() {
            rest = &rest[set..];
            continue;
        }
        let refused = chunk[set];
        let mut probe = Msrs::from_entries(&[kvm_msr_entry {
            index: refused.index,
            ..Default::default()
        }])
        .map_err(fam)?;
        let same =
            fd.get_msrs(&mut probe).ok() == Some(1) && probe.as_slice()[0].data == refused.data;
        if !same {
            return Err(VcpuStateError::MsrRefused {
                index,
                msr: refused.index,
                set: entries.len() - rest.len() + set,
                total: entries.len(),
            });
        }
        log::debug!(
            "vCPU {index}: MSR {:#x} is read-only and already {:#x}",
            refused.index,
            refused.data
        );
        rest = &rest[set + 1..];
    }
    Ok(())
}

fn restore_xsave(
    fd: &VcpuFd,
    index: u8,
    words: &[u32],
    ctx: &VcpuPersistContext,
) -> Result<(), VcpuStateError> {
    let region_bytes = std::mem::size_of::<kvm_xsave>();
    // KVM_SET_XSAVE reads as many bytes as this host's KVM_CAP_XSAVE2 size: the buffer
    // must be at least that long, zero-padded past what was saved.
    let host_words = ctx.xsave2_size.div_ceil(4);
    if host_words <= XSAVE_REGION_WORDS && words.len() <= XSAVE_REGION_WORDS {
        let mut x = kvm_xsave::default();
        x.region[..words.len().min(XSAVE_REGION_WORDS)]
            .copy_from_slice(&words[..words.len().min(XSAVE_REGION_WORDS)]);
        // SAFETY: this host's XSAVE state fits the legacy 4 KiB kvm_xsave (KVM_CAP_XSAVE2
        // reports at most that), so KVM_SET_XSAVE reads no more than `x` holds.
        return unsafe { fd.set_xsave(&x) }.map_err(kvm_err(index, "KVM_SET_XSAVE"));
    }
    let total = words.len().max(host_words).max(region_bytes / 4);
    let mut area =
        Xsave::new(total - XSAVE_REGION_WORDS).map_err(|source| VcpuStateError::Fam {
            index,
            what: "xsave",
            source,
        })?;
    let (head, tail) = words.split_at(XSAVE_REGION_WORDS.min(words.len()));
    // SAFETY: writing plain words into the region the wrapper owns.
    unsafe { area.as_mut_fam_struct() }.xsave.region[..head.len()].copy_from_slice(head);
    area.as_mut_slice()[..tail.len()].copy_from_slice(tail);
    // SAFETY: `area` holds at least KVM_CAP_XSAVE2's size, what KVM_SET_XSAVE reads.
    unsafe { fd.set_xsave2(&area) }.map_err(kvm_err(index, "KVM_SET_XSAVE2"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_first_and_deadline_last() {
        let got = order_msrs(vec![0x6e0, 0x4b56_4d01, 0x10, 0x174, 0x10]);
        assert_eq!(got, vec![0x10, 0x174, 0x4b56_4d01, 0x6e0]);
    }

    #[test]
    fn tolerance_is_250_ppm() {
        assert!(!tsc_needs_scaling(2_000_000, 2_000_000));
        assert!(!tsc_needs_scaling(2_000_500, 2_000_000)); // 250 ppm exactly
        assert!(tsc_needs_scaling(2_000_501, 2_000_000));
        assert!(tsc_needs_scaling(1_999_000, 2_000_000));
    }

    fn state() -> VcpuState {
        VcpuState {
            index: 0,
            cpuid: vec![kvm_cpuid_entry2::default()],
            mp_state: kvm_mp_state::default(),
            regs: kvm_regs::default(),
            sregs: kvm_sregs::default(),
            xsave: vec![0; 1024],
            xcrs: kvm_xcrs::default(),
            debug_regs: kvm_debugregs::default(),
            lapic: kvm_lapic_state::default(),
            msrs: vec![
                kvm_msr_entry {
                    index: MSR_IA32_TSC,
                    data: 777,
                    ..Default::default()
                },
                kvm_msr_entry {
                    index: MSR_IA32_TSC_DEADLINE,
                    data: 0,
                    ..Default::default()
                },
            ],
            events: kvm_vcpu_events::default(),
            tsc_khz: Some(1000),
        }
    }

    #[test]
    fn a_zero_deadline_becomes_the_saved_tsc() {
        let m = state().msrs_for_restore();
        assert_eq!((m[0].data, m[1].data), (777, 777));
    }

    #[test]
    fn out_of_bounds_states_are_refused() {
        assert!(state().validate(0).is_ok());
        assert!(state().validate(1).is_err());
        let mut s = state();
        s.xsave = vec![0; 10];
        assert!(s.validate(0).unwrap_err().to_string().contains("xsave"));
        let mut s = state();
        s.msrs.reverse();
        assert!(s.validate(0).is_err());
        let mut s = state();
        s.cpuid.clear();
        assert!(s.validate(0).is_err());
        let mut s = state();
        s.tsc_khz = Some(0);
        assert!(s.validate(0).is_err());
    }
}
