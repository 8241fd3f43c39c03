use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::bpf_eval::{run, SeccompData, RET_ALLOW, RET_TRAP};
use super::syscall_names::{syscall_number, SYSCALL_NAMES};
use super::*;

const JSON_SOURCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../resources/seccomp/x86_64.json"
);

const KVM_RUN: u64 = 0xae80;
const KVM_CREATE_VM: u64 = 0xae01;
const KVM_SET_USER_MEMORY_REGION: u64 = 0x4020_ae46;
const TUNSETIFF: u64 = 0x4004_54ca;
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const FIONBIO: u64 = 0x5421;
const TIOCSTI: u64 = 0x5412;
const TCGETS: u64 = 0x5401;
const TCSETS: u64 = 0x5402;

fn reviewed(kind: ThreadKind) -> &'static [&'static str] {
    match kind {
        ThreadKind::Vmm => reviewed::VMM,
        ThreadKind::Api => reviewed::API,
        ThreadKind::Vcpu => reviewed::VCPU,
        ThreadKind::Io => reviewed::IO,
    }
}

fn nr(name: &str) -> u32 {
    syscall_number(name).unwrap_or_else(|| panic!("`{name}` is not an x86_64 system call"))
}

fn builtin_filters() -> SeccompFilters {
    SeccompFilters::new(&SeccompLevel::Default).expect("built-in filters")
}

fn decide(kind: ThreadKind, name: &str, args: [u64; 6]) -> u32 {
    let filters = builtin_filters();
    let program = filters.program(kind).expect("enabled");
    run(program, &SeccompData::call(nr(name), args))
        .unwrap_or_else(|e| panic!("{kind} filter on {name}: {e}"))
}

fn json_names(kind: ThreadKind) -> BTreeSet<String> {
    let text = std::fs::read_to_string(JSON_SOURCE).expect("read the JSON source");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    doc[kind.name()]["filter"]
        .as_array()
        .unwrap_or_else(|| panic!("no `{kind}` filter in {JSON_SOURCE}"))
        .iter()
        .map(|rule| rule["syscall"].as_str().expect("syscall name").to_owned())
        .collect()
}

#[test]
fn every_filter_allows_exactly_its_reviewed_list() {
    for kind in ThreadKind::ALL {
        let in_json = json_names(kind);
        let reviewed: BTreeSet<String> = reviewed(kind).iter().map(|s| s.to_string()).collect();
        let unreviewed: Vec<_> = in_json.difference(&reviewed).collect();
        let stale: Vec<_> = reviewed.difference(&in_json).collect();
        assert!(
            unreviewed.is_empty(),
            "the `{kind}` filter allows {unreviewed:?}, which are not in seccomp/reviewed.rs: \
             review them and add them there"
        );
        assert!(
            stale.is_empty(),
            "seccomp/reviewed.rs lists {stale:?} for `{kind}`, which the filter no longer \
             allows: remove them"
        );
    }
}

#[test]
fn built_in_programs_match_the_json_source() {
    let file = std::fs::File::open(JSON_SOURCE).expect("open the JSON source");
    let compiled = seccompiler::compile_from_json(file, seccompiler::TargetArch::x86_64)
        .expect("the JSON source compiles");
    let filters = builtin_filters();
    for kind in ThreadKind::ALL {
        assert_eq!(
            filters.program(kind),
            compiled.get(kind.name()).map(Vec::as_slice),
            "the embedded `{kind}` program is stale"
        );
    }
}

#[test]
fn compiled_filters_trap_every_unlisted_call() {
    let filters = builtin_filters();
    for kind in ThreadKind::ALL {
        let program = filters.program(kind).expect("enabled");
        let listed: BTreeSet<u32> = reviewed(kind).iter().map(|n| nr(n)).collect();
        let mut allowed = 0;
        for &(number, name) in SYSCALL_NAMES {
            for args in [[0; 6], [u64::MAX; 6], [1, 2, 3, 4, 5, 6]] {
                let action = run(program, &SeccompData::call(number, args)).expect("runs");
                if !listed.contains(&number) {
                    assert_eq!(action, RET_TRAP, "`{kind}` lets unlisted `{name}` through");
                } else if action == RET_ALLOW {
                    allowed += 1;
                }
            }
        }
        assert!(allowed > 0, "`{kind}` allows nothing at all");
        // Numbers past the table (and the x32 range) trap too.
        for number in [451, 1000, 0x4000_0000, u32::MAX] {
            let action = run(program, &SeccompData::call(number, [0; 6])).expect("runs");
            assert_eq!(action, RET_TRAP, "`{kind}` lets #{number} through");
        }
    }
}

#[test]
fn unchecked_calls_are_allowed_with_any_arguments() {
    for kind in ThreadKind::ALL {
        for name in reviewed(kind)
            .iter()
            .filter(|n| !reviewed::ARG_CHECKED.contains(n))
        {
            for args in [[0; 6], [u64::MAX; 6]] {
                assert_eq!(
                    decide(kind, name, args),
                    RET_ALLOW,
                    "`{kind}` refuses `{name}`"
                );
            }
        }
    }
}

#[test]
fn other_architectures_are_refused() {
    let filters = builtin_filters();
    for kind in ThreadKind::ALL {
        let program = filters.program(kind).expect("enabled");
        let mut data = SeccompData::call(nr("write"), [0; 6]);
        data.arch = 0x4000_0003; // AUDIT_ARCH_I386
        let action = run(program, &data).expect("runs");
        assert_ne!(action, RET_ALLOW, "`{kind}` allows a 32-bit call");
    }
}

#[test]
fn the_sigsys_handler_can_report_on_every_thread() {
    for kind in ThreadKind::ALL {
        for name in ["write", "exit_group"] {
            assert_eq!(
                decide(kind, name, [2, 0, 0, 0, 0, 0]),
                RET_ALLOW,
                "{kind}: {name}"
            );
        }
    }
}

#[test]
fn ioctl_allows_only_the_requests_each_thread_uses() {
    let ioctl = |kind, request: u64| decide(kind, "ioctl", [9, request, 0, 0, 0, 0]);
    assert_eq!(ioctl(ThreadKind::Vcpu, KVM_RUN), RET_ALLOW);
    assert_eq!(ioctl(ThreadKind::Vcpu, TUNSETOFFLOAD), RET_ALLOW);
    assert_eq!(ioctl(ThreadKind::Api, FIONBIO), RET_ALLOW);
    // Restoring the console terminal at exit; nothing else may touch terminals.
    assert_eq!(ioctl(ThreadKind::Vmm, TCGETS), RET_ALLOW);
    assert_eq!(ioctl(ThreadKind::Vmm, TCSETS), RET_ALLOW);
    for kind in [ThreadKind::Api, ThreadKind::Vcpu, ThreadKind::Io] {
        assert_eq!(ioctl(kind, TCSETS), RET_TRAP, "{kind}: TCSETS");
    }
    for kind in ThreadKind::ALL {
        for request in [
            KVM_CREATE_VM,
            KVM_SET_USER_MEMORY_REGION,
            TUNSETIFF,
            TIOCSTI,
        ] {
            assert_eq!(ioctl(kind, request), RET_TRAP, "{kind}: ioctl {request:#x}");
        }
    }
    for kind in [ThreadKind::Vmm, ThreadKind::Api, ThreadKind::Io] {
        assert_eq!(ioctl(kind, KVM_RUN), RET_TRAP, "{kind}: KVM_RUN");
    }
    // The request is compared as 32 bits; the upper half of the register is ignored by the
    // kernel's ioctl(2) too (it takes an unsigned int).
    assert_eq!(ioctl(ThreadKind::Vcpu, KVM_RUN | 0x1_0000_0000), RET_ALLOW);
}

#[test]
fn memory_can_never_be_made_executable() {
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let rwx = rw | libc::PROT_EXEC as u64;
    let exec = libc::PROT_EXEC as u64;
    for kind in ThreadKind::ALL {
        for name in ["mmap", "mprotect"] {
            assert_eq!(
                decide(kind, name, [0, 4096, rw, 0x22, 0, 0]),
                RET_ALLOW,
                "{kind}: {name}"
            );
            assert_eq!(
                decide(kind, name, [0, 4096, 0, 0x22, 0, 0]),
                RET_ALLOW,
                "{kind}: {name}"
            );
            for prot in [rwx, exec] {
                assert_eq!(
                    decide(kind, name, [0, 4096, prot, 0x22, 0, 0]),
                    RET_TRAP,
                    "{kind}: {name} with prot {prot:#x}"
                );
            }
        }
        let madvise = |advice: u64| decide(kind, "madvise", [0, 4096, advice, 0, 0, 0]);
        assert_eq!(madvise(libc::MADV_DONTNEED as u64), RET_ALLOW, "{kind}");
        assert_eq!(madvise(libc::MADV_DONTFORK as u64), RET_TRAP, "{kind}");
        let fcntl = |cmd: u64| decide(kind, "fcntl", [3, cmd, 0, 0, 0, 0]);
        assert_eq!(fcntl(libc::F_GETFD as u64), RET_ALLOW, "{kind}");
        assert_eq!(fcntl(libc::F_SETFL as u64), RET_TRAP, "{kind}");
    }
}

#[test]
fn the_vmm_thread_may_only_kick_vcpus() {
    // The JSON pins the kick signal as 34; glibc's SIGRTMIN must still be that.
    let kick = vmm_sys_util::signal::SIGRTMIN() as u64;
    assert_eq!(
        kick, 34,
        "update the tgkill rule in resources/seccomp/x86_64.json"
    );
    let tgkill = |sig: u64| decide(ThreadKind::Vmm, "tgkill", [1, 2, sig, 0, 0, 0]);
    assert_eq!(tgkill(kick), RET_ALLOW);
    for sig in [libc::SIGKILL, libc::SIGTERM, libc::SIGSYS] {
        assert_eq!(tgkill(sig as u64), RET_TRAP, "signal {sig}");
    }
    for kind in [ThreadKind::Api, ThreadKind::Vcpu, ThreadKind::Io] {
        assert_eq!(
            decide(kind, "tgkill", [1, 2, kick, 0, 0, 0]),
            RET_TRAP,
            "{kind}"
        );
    }
}

#[test]
fn no_thread_may_create_sockets_or_processes_or_open_files() {
    for kind in ThreadKind::ALL {
        for name in [
            "socket", "connect", "bind", "execve", "fork", "clone", "clone3", "ptrace", "open",
            "openat", "mount", "kill", "setuid", "getppid",
        ] {
            // PATCH /drives/{id} opens the new backing file on the VMM thread.
            if kind == ThreadKind::Vmm && name == "openat" {
                continue;
            }
            // vsock: the io thread connects Unix sockets (see the test below for `socket`).
            if kind == ThreadKind::Io && name == "connect" {
                continue;
            }
            assert_eq!(
                decide(kind, name, [libc::AF_INET as u64, 1, 0, 0, 0, 0]),
                RET_TRAP,
                "{kind}: {name}"
            );
        }
    }
}

#[test]
fn the_io_thread_may_create_unix_stream_sockets_only() {
    let unix = libc::AF_UNIX as u64;
    let stream = (libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64;
    assert_eq!(
        decide(ThreadKind::Io, "socket", [unix, stream, 0, 0, 0, 0]),
        RET_ALLOW
    );
    for family in [
        libc::AF_INET,
        libc::AF_INET6,
        libc::AF_NETLINK,
        libc::AF_PACKET,
    ] {
        assert_eq!(
            decide(
                ThreadKind::Io,
                "socket",
                [family as u64, stream, 0, 0, 0, 0]
            ),
            RET_TRAP,
            "family {family}"
        );
    }
    for kind in [ThreadKind::Vmm, ThreadKind::Api, ThreadKind::Vcpu] {
        assert_eq!(
            decide(kind, "socket", [unix, stream, 0, 0, 0, 0]),
            RET_TRAP,
            "{kind}"
        );
    }
}

#[test]
fn level_from_flags() {
    assert_eq!(
        SeccompLevel::from_flags(false, None).ok(),
        Some(SeccompLevel::Default)
    );
    assert_eq!(
        SeccompLevel::from_flags(true, None).ok(),
        Some(SeccompLevel::Disabled)
    );
    assert_eq!(
        SeccompLevel::from_flags(false, Some("f.json")).ok(),
        Some(SeccompLevel::Custom(PathBuf::from("f.json")))
    );
    assert!(matches!(
        SeccompLevel::from_flags(true, Some("f.json")),
        Err(SeccompError::ConflictingFlags)
    ));
    assert!(!SeccompFilters::new(&SeccompLevel::Disabled)
        .expect("disabled")
        .enabled());
}

struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, text: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("xenia-seccomp-{}-{tag}.json", std::process::id()));
        std::fs::write(&path, text).expect("write temp file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn custom(path: &Path) -> Result<SeccompFilters, SeccompError> {
    SeccompFilters::new(&SeccompLevel::Custom(path.to_owned()))
}

#[test]
fn custom_filter_file_is_compiled_at_start_up() {
    let text = std::fs::read_to_string(JSON_SOURCE).expect("read the JSON source");
    let file = TempFile::new("copy", &text);
    let filters = custom(&file.0).expect("a copy of the built-in file compiles");
    let builtin = builtin_filters();
    for kind in ThreadKind::ALL {
        assert_eq!(filters.program(kind), builtin.program(kind), "{kind}");
    }
}

#[test]
fn bad_custom_filter_files_are_refused_with_the_reason() {
    let missing = Path::new("/nonexistent/xenia-filter.json");
    let e = custom(missing).expect_err("missing file");
    assert!(matches!(e, SeccompError::ReadFilter { .. }), "{e}");
    assert!(
        e.to_string().contains("/nonexistent/xenia-filter.json"),
        "{e}"
    );

    let file = TempFile::new("garbage", "{ not json");
    let e = custom(&file.0).expect_err("garbage");
    assert!(matches!(e, SeccompError::CompileFilter { .. }), "{e}");

    let rule = r#"{"default_action":"trap","filter_action":"allow","filter":[{"syscall":"read"}]}"#;
    let file = TempFile::new(
        "badname",
        &format!(
            r#"{{"vmm":{{"default_action":"trap","filter_action":"allow","filter":[{{"syscall":"no_such_call"}}]}},"api":{rule},"vcpu":{rule},"io":{rule}}}"#
        ),
    );
    let e = custom(&file.0).expect_err("unknown syscall");
    assert!(e.to_string().contains("no_such_call"), "{e}");

    let file = TempFile::new(
        "nokind",
        &format!(r#"{{"vmm":{rule},"api":{rule},"vcpu":{rule}}}"#),
    );
    let e = custom(&file.0).expect_err("missing io");
    assert!(
        matches!(
            e,
            SeccompError::MissingKind {
                kind: ThreadKind::Io,
                ..
            }
        ),
        "{e}"
    );

    let file = TempFile::new(
        "extra",
        &format!(r#"{{"vmm":{rule},"api":{rule},"vcpu":{rule},"io":{rule},"gpu":{rule}}}"#),
    );
    let e = custom(&file.0).expect_err("unknown kind");
    assert!(e.to_string().contains("`gpu`"), "{e}");
}

fn seccomp_mode(status_path: &str) -> String {
    let status = std::fs::read_to_string(status_path).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(|v| v.trim().to_owned())
        .expect("Seccomp: line")
}

/// Installs each built-in filter on a fresh thread, which then waits and exits under it: the
/// filter must cover the thread's own teardown, and must not reach the calling thread. The
/// `vmm` filter belongs to the main thread, which never ends through thread exit (the
/// process exits), so its test thread stays parked until the test process ends.
#[test]
fn install_filters_only_the_calling_thread_and_lets_it_exit() {
    sigsys::register_handler().expect("SIGSYS handler");
    let filters = builtin_filters();
    for kind in ThreadKind::ALL {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let f = filters.clone();
        let thread = std::thread::spawn(move || {
            // SAFETY: gettid has no arguments.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) };
            let result = f.install(kind).map_err(|e| e.to_string());
            let _ = tid_tx.send((tid, result));
            let _ = done_rx.recv();
        });
        let (tid, result) = tid_rx.recv().expect("the thread reports");
        result.expect("install");
        assert_eq!(
            seccomp_mode(&format!("/proc/self/task/{tid}/status")),
            "2",
            "{kind}"
        );
        assert_eq!(
            seccomp_mode("/proc/thread-self/status"),
            "0",
            "{kind}: leaked"
        );
        if kind == ThreadKind::Vmm {
            std::mem::forget(done_tx);
            continue;
        }
        drop(done_tx);
        thread.join().expect("the filtered thread exits cleanly");
    }
}

/// `_IOC(dir, KVMIO, nr, size)` computed from the structure sizes this build uses, so a
/// number typed into the JSON cannot drift from the real request.
fn kvm_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}

#[test]
fn snapshot_ioctls_are_allowed_where_the_snapshot_code_runs() {
    use kvm_bindings::*;
    use std::mem::size_of;
    let (r, w, rw) = (2, 1, 3);
    let ioctl = |kind, request: u64| decide(kind, "ioctl", [9, request, 0, 0, 0, 0]);
    let vcpu = [
        kvm_ioc(r, 0x81, size_of::<kvm_regs>()),
        kvm_ioc(r, 0x83, size_of::<kvm_sregs>()),
        kvm_ioc(rw, 0x88, size_of::<kvm_msrs>()),
        kvm_ioc(rw, 0x91, size_of::<kvm_cpuid2>()),
        kvm_ioc(r, 0x8e, size_of::<kvm_lapic_state>()),
        kvm_ioc(r, 0x98, size_of::<kvm_mp_state>()),
        kvm_ioc(r, 0x9f, size_of::<kvm_vcpu_events>()),
        kvm_ioc(r, 0xa1, size_of::<kvm_debugregs>()),
        kvm_ioc(r, 0xa4, size_of::<kvm_xsave>()),
        kvm_ioc(r, 0xa6, size_of::<kvm_xcrs>()),
        kvm_ioc(r, 0xcf, size_of::<kvm_xsave>()),
        kvm_ioc(0, 0xa3, 0),
    ];
    let vmm = [
        kvm_ioc(r, 0x7c, size_of::<kvm_clock_data>()),
        kvm_ioc(r, 0x9f, size_of::<kvm_pit_state2>()),
        kvm_ioc(rw, 0x62, size_of::<kvm_irqchip>()),
        kvm_ioc(w, 0x42, size_of::<kvm_dirty_log>()),
    ];
    for req in vcpu {
        assert_eq!(ioctl(ThreadKind::Vcpu, req), RET_ALLOW, "vcpu {req:#x}");
        assert_eq!(ioctl(ThreadKind::Api, req), RET_TRAP, "api {req:#x}");
    }
    for req in vmm {
        assert_eq!(ioctl(ThreadKind::Vmm, req), RET_ALLOW, "vmm {req:#x}");
        assert_eq!(ioctl(ThreadKind::Io, req), RET_TRAP, "io {req:#x}");
    }
    // Nothing that changes KVM state was opened up on the VMM thread.
    assert_eq!(
        ioctl(ThreadKind::Vmm, kvm_ioc(w, 0x63, size_of::<kvm_irqchip>())),
        RET_TRAP
    );
}
