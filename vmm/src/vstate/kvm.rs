//! Opening `/dev/kvm` and finding out which flavour of KVM it is.

use std::path::Path;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

/// Capabilities xenia cannot run without.
const REQUIRED_CAPS: [(Cap, &str); 5] = [
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
];

/// Errors while opening KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("cannot open /dev/kvm: {0}")]
    Open(kvm_ioctls::Error),
    #[error("/dev/kvm lacks the required capability {0}")]
    MissingCap(&'static str),
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
}

/// Which KVM implementation is behind `/dev/kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmFlavour {
    /// KVM on hardware virtualization (VMX/SVM).
    Hardware,
    /// PVM: KVM without hardware virtualization; guest ring 0 is emulated.
    Pvm,
}

impl KvmFlavour {
    pub fn detect() -> Self {
        if Path::new("/sys/module/kvm_pvm").exists() {
            KvmFlavour::Pvm
        } else {
            KvmFlavour::Hardware
        }
    }
}

/// An open `/dev/kvm`.
#[derive(Debug)]
pub struct KvmContext {
    pub kvm: Kvm,
    pub flavour: KvmFlavour,
}

impl KvmContext {
    pub fn open() -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(KvmError::Open)?;
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(cap) {
                return Err(KvmError::MissingCap(name));
            }
        }
        let flavour = KvmFlavour::detect();
        log::info!(
            "using {flavour:?} KVM (API version {})",
            kvm.get_api_version()
        );
        Ok(Self { kvm, flavour })
    }

    /// The CPUID KVM can offer, to be normalised per vCPU.
    pub fn supported_cpuid(&self) -> Result<CpuId, KvmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::SupportedCpuid)
    }
}

/// True when running under CI (`CI=true`, as GitHub Actions, GitLab and most others set it):
/// there a test must not pass by skipping what it could not run.
#[cfg(test)]
pub(crate) fn under_ci(ci: Option<&str>) -> bool {
    matches!(ci, Some(v) if v.eq_ignore_ascii_case("true") || v == "1")
}

/// `/dev/kvm` for a unit test that needs it. Without it the test skips (returns `None`,
/// with a note on stderr), except under CI, where a missing KVM fails the test instead of
/// letting it pass silently.
#[cfg(test)]
pub(crate) fn open_for_tests() -> Option<KvmContext> {
    if std::path::Path::new("/dev/kvm").exists() {
        return Some(KvmContext::open().expect("/dev/kvm exists but cannot be used"));
    }
    assert!(
        !under_ci(std::env::var("CI").ok().as_deref()),
        "CI=true but this host has no /dev/kvm: the KVM tests cannot run"
    );
    #[allow(clippy::print_stderr)]
    {
        eprintln!("SKIPPED: no /dev/kvm on this host");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_is_recognised_from_its_usual_values() {
        assert!(under_ci(Some("true")));
        assert!(under_ci(Some("TRUE")));
        assert!(under_ci(Some("1")));
        assert!(!under_ci(Some("false")));
        assert!(!under_ci(Some("")));
        assert!(!under_ci(None));
    }
}
