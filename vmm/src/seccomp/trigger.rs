//! Test-only (cargo feature `seccomp-test-trigger`, off by default): with
//! `XENIA_SECCOMP_TEST_TRIGGER=<kind>[:<call>]` in the environment, a thread of that kind
//! makes a forbidden system call right after installing its filter, so the integration tests
//! can see a violation end the process. `<call>` is `getppid` (the default: in no filter) or
//! `socket-inet` (`socket(AF_INET, ...)`: refused by the AF_UNIX argument check).

use super::{SeccompError, ThreadKind};

/// The variable read at start-up.
pub(super) const TRIGGER_ENV: &str = "XENIA_SECCOMP_TEST_TRIGGER";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Getppid,
    SocketInet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Trigger {
    kind: ThreadKind,
    call: Call,
}

impl Trigger {
    pub(super) fn from_env() -> Result<Option<Trigger>, SeccompError> {
        match std::env::var(TRIGGER_ENV) {
            Ok(value) => Trigger::parse(&value).map(Some),
            Err(_) => Ok(None),
        }
    }

    fn parse(value: &str) -> Result<Trigger, SeccompError> {
        let (kind, call) = value.split_once(':').unwrap_or((value, "getppid"));
        let kind = kind
            .parse::<ThreadKind>()
            .map_err(SeccompError::BadTrigger)?;
        let call = match call {
            "getppid" => Call::Getppid,
            "socket-inet" => Call::SocketInet,
            other => {
                return Err(SeccompError::BadTrigger(format!(
                    "unknown call `{other}` (expected getppid or socket-inet)"
                )))
            }
        };
        Ok(Trigger { kind, call })
    }

    /// Makes the forbidden call if the calling thread is of the chosen kind.
    pub(super) fn fire_if(&self, kind: ThreadKind) {
        if kind != self.kind {
            return;
        }
        log::warn!("seccomp test trigger: the `{kind}` thread makes a forbidden call");
        match self.call {
            // SAFETY: getppid has no arguments and no side effect.
            Call::Getppid => unsafe {
                libc::syscall(libc::SYS_getppid);
            },
            Call::SocketInet => {
                // SAFETY: socket(2) with constant arguments; the fd, should the filter let the
                // call through, is closed at once.
                let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                if fd >= 0 {
                    // SAFETY: `fd` was just returned by socket(2) and is owned here.
                    unsafe { libc::close(fd) };
                }
            }
        }
        log::error!("seccomp test trigger: the forbidden call on the `{kind}` thread went through");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kind_and_call() {
        let t = Trigger::parse("vcpu").expect("vcpu");
        assert_eq!(t.kind, ThreadKind::Vcpu);
        assert_eq!(t.call, Call::Getppid);
        let t = Trigger::parse("io:socket-inet").expect("io:socket-inet");
        assert_eq!((t.kind, t.call), (ThreadKind::Io, Call::SocketInet));
        assert!(Trigger::parse("gpu").is_err());
        assert!(Trigger::parse("vmm:reboot").is_err());
    }
}
