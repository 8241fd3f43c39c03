//! The SIGSYS handler: a filter's default action is `SECCOMP_RET_TRAP`, so a forbidden system
//! call lands here. The handler names the call on stderr and ends the process with a distinct
//! status. It runs under the offending thread's filter, so it uses only `write` and
//! `exit_group` (both in every filter) and no allocation, lock or formatting machinery.

use std::cell::Cell;

use vmm_sys_util::signal::register_signal_handler;

use super::syscall_names::syscall_name;
use super::{SeccompError, ThreadKind};

/// xenia's exit status after a seccomp violation (128 + 20, outside the statuses xenia uses
/// otherwise and distinct from a death by signal as a shell reports it, 128 + 31).
pub const SECCOMP_VIOLATION_EXIT_CODE: i32 = 148;

/// `si_code` of a SIGSYS raised by seccomp.
const SYS_SECCOMP: i32 = 1;

thread_local! {
    /// The kind of the calling thread, set when its filter is installed.
    static THREAD_KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

pub(super) fn set_thread_kind(kind: ThreadKind) {
    THREAD_KIND.with(|k| k.set(Some(kind)));
}

/// The SIGSYS part of `siginfo_t` on Linux x86_64 (`_sigsys` in the kernel's union).
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    call_addr: *mut libc::c_void,
    syscall: i32,
    arch: u32,
}

/// A fixed buffer for building the report line without allocating.
struct Line {
    buf: [u8; 192],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Line {
            buf: [0; 192],
            len: 0,
        }
    }

    fn push(&mut self, s: &str) {
        for &b in s.as_bytes() {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &d in &digits[i..] {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = d;
                self.len += 1;
            }
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The report line for a trapped call; kept apart from the handler so it can be tested.
fn report_line(kind: Option<ThreadKind>, code: i32, nr: i32) -> Line {
    let mut line = Line::new();
    line.push("xenia: seccomp violation: the `");
    line.push(kind.map_or("unfiltered", ThreadKind::name));
    line.push("` thread made a forbidden system call: ");
    if code == SYS_SECCOMP {
        match u32::try_from(nr).ok().and_then(syscall_name) {
            Some(name) => line.push(name),
            None => line.push("unknown"),
        }
        line.push(" (#");
        line.push_number(u64::from(nr.unsigned_abs()));
        line.push(")");
    } else {
        line.push("none (SIGSYS was sent by another process)");
    }
    line.push("; exiting with status ");
    line.push_number(SECCOMP_VIOLATION_EXIT_CODE as u64);
    line.push("\n");
    line
}

extern "C" fn handle_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO handler; for SIGSYS its
    // union holds `_sigsys`, whose layout `SigsysInfo` mirrors, and siginfo_t (128 bytes) is
    // larger than SigsysInfo, so the read stays inside it.
    let (code, nr) = unsafe {
        let sys = info.cast::<SigsysInfo>();
        ((*sys).code, (*sys).syscall)
    };
    let kind = THREAD_KIND.with(Cell::get);
    let line = report_line(kind, code, nr);
    let bytes = line.bytes();
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `bytes` is a valid buffer of
    // `bytes.len()` bytes. A short or failed write changes nothing: we exit either way.
    unsafe {
        libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(SECCOMP_VIOLATION_EXIT_CODE);
    }
}

/// Installs the SIGSYS handler for the whole process.
pub(super) fn register_handler() -> Result<(), SeccompError> {
    register_signal_handler(libc::SIGSYS, handle_sigsys).map_err(SeccompError::SigsysHandler)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(line: &Line) -> &str {
        std::str::from_utf8(line.bytes()).unwrap_or("<not utf-8>")
    }

    #[test]
    fn report_names_the_call_the_thread_and_the_status() {
        let line = report_line(
            Some(ThreadKind::Vcpu),
            SYS_SECCOMP,
            libc::SYS_getppid as i32,
        );
        assert_eq!(
            text(&line),
            "xenia: seccomp violation: the `vcpu` thread made a forbidden system call: \
             getppid (#110); exiting with status 148\n"
        );
    }

    #[test]
    fn report_survives_unknown_numbers_and_foreign_signals() {
        let line = report_line(None, SYS_SECCOMP, 9999);
        assert!(text(&line).contains("`unfiltered` thread"));
        assert!(text(&line).contains("unknown (#9999)"));
        let line = report_line(Some(ThreadKind::Io), 0, 0);
        assert!(text(&line).contains("sent by another process"));
    }

    #[test]
    fn sigsys_layout_matches_the_kernel() {
        // si_syscall sits at byte 24 of siginfo_t on x86_64 (after signo, errno, code,
        // padding and the 8-byte call address).
        assert_eq!(std::mem::offset_of!(SigsysInfo, syscall), 24);
        assert!(std::mem::size_of::<SigsysInfo>() <= std::mem::size_of::<libc::siginfo_t>());
    }
}
