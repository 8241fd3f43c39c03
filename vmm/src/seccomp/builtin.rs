//! The built-in filters, compiled by `build.rs` from `resources/seccomp/x86_64.json`.

use seccompiler::sock_filter;

use super::ThreadKind;

include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));

/// The built-in BPF program of `kind`.
pub(super) fn program(kind: ThreadKind) -> &'static [sock_filter] {
    match kind {
        ThreadKind::Vmm => VMM,
        ThreadKind::Api => API,
        ThreadKind::Vcpu => VCPU,
        ThreadKind::Io => IO,
    }
}
