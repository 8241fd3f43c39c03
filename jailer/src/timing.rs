//! The start times the jailer hands to the exec file, with Firecracker's jailer's flags:
//! `--start-time-us` (when the jailer started, µs of CLOCK_MONOTONIC), `--start-time-cpu-us`
//! (the reading of this process's CPU clock the exec file should count from) and
//! `--parent-cpu-time-us` (CPU time spent in processes this one forked from). xenia turns
//! them into `api_server.process_startup_time_us` / `_cpu_us`: the whole launch, jailer
//! included.
//!
//! The process CPU clock survives `execve` but restarts at zero in a forked child, so a fork
//! moves what the parent spent so far into `parent_cpu_us` and resets the base to zero.

use std::ffi::OsString;

/// Microseconds on `clock`, or 0 if it cannot be read (the metric is then only less exact).
fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes one timespec, which lives on this stack frame.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartTimes {
    start_us: u64,
    cpu_base_us: u64,
    parent_cpu_us: u64,
}

impl StartTimes {
    /// Taken first thing at start.
    pub fn now() -> Self {
        Self {
            start_us: clock_us(libc::CLOCK_MONOTONIC),
            cpu_base_us: clock_us(libc::CLOCK_PROCESS_CPUTIME_ID),
            parent_cpu_us: 0,
        }
    }

    /// The CPU time this process has used since the base, for a fork about to happen.
    pub fn cpu_spent(&self) -> u64 {
        clock_us(libc::CLOCK_PROCESS_CPUTIME_ID).saturating_sub(self.cpu_base_us)
    }

    /// In the child of a fork, given what the parent had spent (`cpu_spent` just before).
    pub fn forked(&mut self, parent_spent: u64) {
        self.parent_cpu_us = self.parent_cpu_us.saturating_add(parent_spent);
        self.cpu_base_us = 0;
    }

    /// The flags for the exec file.
    pub fn args(&self) -> Vec<OsString> {
        [
            ("--start-time-us", self.start_us),
            ("--start-time-cpu-us", self.cpu_base_us),
            ("--parent-cpu-time-us", self.parent_cpu_us),
        ]
        .into_iter()
        .flat_map(|(flag, v)| [OsString::from(flag), OsString::from(v.to_string())])
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fork_moves_the_cpu_spent_into_the_parent_time() {
        let mut t = StartTimes {
            start_us: 5,
            cpu_base_us: 100,
            parent_cpu_us: 0,
        };
        t.forked(40);
        t.forked(2);
        assert_eq!(
            t,
            StartTimes {
                start_us: 5,
                cpu_base_us: 0,
                parent_cpu_us: 42
            }
        );
        let args: Vec<String> = t
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap_or_default())
            .collect();
        assert_eq!(
            args,
            [
                "--start-time-us",
                "5",
                "--start-time-cpu-us",
                "0",
                "--parent-cpu-time-us",
                "42"
            ]
        );
    }

    #[test]
    fn readings_are_taken() {
        let t = StartTimes::now();
        assert!(t.start_us > 0);
        let spent = t.cpu_spent();
        assert!(spent < 60_000_000, "{spent}");
    }
}
