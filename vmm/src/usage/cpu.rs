//! CPU time of xenia's threads, read from the kernel's per-thread CPU clocks.
//!
//! Each thread registers itself once ([`register_current`]): it looks up its own CPU clock
//! id with `pthread_getcpuclockid` (pure libc arithmetic on the thread's tid, no system call)
//! and stores it in a [`ThreadCpu`] slot. The VMM thread then reads every slot with
//! `clock_gettime` on that clock id, a call every thread filter already allows, so nothing is
//! added to a hot path and seccomp is not widened. A thread that ends (a vCPU after the guest
//! shut down) takes its clock with it: it calls [`ThreadCpu::sample_self`] just before it
//! returns, so its last value is kept.
//!
//! The kernel keeps three clocks per thread: `SCHED` (exact run time, ns), `PROF`
//! (user + system, tick-sampled) and `VIRT` (user only, tick-sampled). The total is the exact
//! `SCHED` value; it is split into user and system in the ratio of the tick samples, as
//! `getrusage`/`/proc` do, and each part is kept monotonic.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use serde::{Deserialize, Serialize};

/// The low bits of a Linux CPU clock id select the clock (include/linux/posix-timers.h).
const CPUCLOCK_PROF: libc::clockid_t = 0;
const CPUCLOCK_VIRT: libc::clockid_t = 1;
const CPUCLOCK_CLOCK_MASK: libc::clockid_t = 3;
/// No clock registered (a valid per-thread CPU clock id is always negative).
const NO_CLOCK: i32 = 0;

/// Which of xenia's threads a slot belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ThreadRole {
    /// The VMM (main) thread: control loop, API actions, metrics.
    Vmm,
    /// The API server thread.
    Api,
    /// The `io` thread serving every virtio device.
    Io,
    /// vCPU `index`.
    Vcpu(u8),
}

/// Cumulative CPU time of one thread.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuTime {
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub cpu_total_ns: u64,
}

impl CpuTime {
    pub fn add(&self, other: &CpuTime) -> CpuTime {
        CpuTime {
            cpu_user_ns: self.cpu_user_ns.saturating_add(other.cpu_user_ns),
            cpu_system_ns: self.cpu_system_ns.saturating_add(other.cpu_system_ns),
            cpu_total_ns: self.cpu_total_ns.saturating_add(other.cpu_total_ns),
        }
    }
}

/// One thread's clock id and the last values read from it.
#[derive(Debug, Default)]
pub struct ThreadCpu {
    clock: AtomicI32,
    user_ns: AtomicU64,
    system_ns: AtomicU64,
    total_ns: AtomicU64,
}

fn read_clock(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; an invalid clock id (a thread that has
    // ended) makes the call fail with EINVAL, which is handled.
    let ret = unsafe { libc::clock_gettime(clock, &mut ts) };
    if ret != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nsecs = u64::try_from(ts.tv_nsec).ok()?;
    Some(secs.saturating_mul(1_000_000_000).saturating_add(nsecs))
}

/// Splits `total` in the ratio `user : prof - user`, keeping each part monotonic against
/// the previous (`prev_user`, `prev_system`).
fn split(
    total: u64,
    user_ticks: u64,
    prof_ticks: u64,
    prev_user: u64,
    prev_system: u64,
) -> (u64, u64) {
    let scaled_user = if prof_ticks == 0 {
        0
    } else {
        let u = u128::from(total) * u128::from(user_ticks.min(prof_ticks)) / u128::from(prof_ticks);
        u64::try_from(u).unwrap_or(total)
    };
    let user = scaled_user.max(prev_user).min(total.max(prev_user));
    let system = total.saturating_sub(user).max(prev_system);
    (user, system)
}

impl ThreadCpu {
    /// Reads the thread's clocks if it still runs and returns the latest known values
    /// (never smaller than an earlier result).
    pub fn sample(&self) -> CpuTime {
        let clock = self.clock.load(Ordering::Acquire);
        if clock != NO_CLOCK {
            let base = clock & !CPUCLOCK_CLOCK_MASK;
            if let (Some(total), Some(user), Some(prof)) = (
                read_clock(clock),
                read_clock(base | CPUCLOCK_VIRT),
                read_clock(base | CPUCLOCK_PROF),
            ) {
                let (u, s) = split(
                    total,
                    user,
                    prof,
                    self.user_ns.load(Ordering::Relaxed),
                    self.system_ns.load(Ordering::Relaxed),
                );
                self.user_ns.fetch_max(u, Ordering::Relaxed);
                self.system_ns.fetch_max(s, Ordering::Relaxed);
                self.total_ns.fetch_max(total, Ordering::Relaxed);
            }
        }
        self.last()
    }

    /// The values of the last successful read.
    pub fn last(&self) -> CpuTime {
        CpuTime {
            cpu_user_ns: self.user_ns.load(Ordering::Relaxed),
            cpu_system_ns: self.system_ns.load(Ordering::Relaxed),
            cpu_total_ns: self.total_ns.load(Ordering::Relaxed),
        }
    }

    /// Called by the thread itself as it ends: its clock disappears with it.
    pub fn sample_self(&self) {
        let _ = self.sample();
    }

    fn set_clock(&self, clock: libc::clockid_t) {
        self.clock.store(clock, Ordering::Release);
    }
}

type Registry = Mutex<Vec<(ThreadRole, Arc<ThreadCpu>)>>;

fn registry() -> &'static Registry {
    static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::default);
    &REGISTRY
}

/// Registers the calling thread's CPU clock under `role` and returns its slot. A role
/// registered again (a boot attempt that failed and was retried) gets a fresh slot.
pub fn register_current(role: ThreadRole) -> Arc<ThreadCpu> {
    let slot = Arc::new(ThreadCpu::default());
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_self() is the calling thread, alive for this call; `clock` is a valid
    // out-pointer. glibc computes the id from the thread's tid without a system call.
    let ret = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    if ret == 0 {
        slot.set_clock(clock);
    } else {
        log::warn!("{role:?}: no CPU clock (errno {ret}); its CPU time reads as 0");
    }
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.retain(|(existing, _)| *existing != role);
    r.push((role, slot.clone()));
    r.sort_by_key(|(role, _)| *role);
    slot
}

/// Drops every vCPU slot: a boot attempt is about to start its own vCPUs (a failed attempt
/// with more vCPUs than the next must not leave its extra ones in the record).
pub fn forget_vcpus() {
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.retain(|(role, _)| !matches!(role, ThreadRole::Vcpu(_)));
}

/// Reads every registered thread: (role, cumulative CPU time), in role order.
pub fn sample_all() -> Vec<(ThreadRole, CpuTime)> {
    let r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.iter()
        .map(|(role, slot)| (*role, slot.sample()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins until the calling thread has run `ms` of CPU time by its own clock (a wall-clock
    /// spin would give less CPU time on a loaded machine).
    fn burn(ms: u64) {
        let mut x = 0u64;
        while read_clock(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or(u64::MAX) < ms * 1_000_000 {
            for _ in 0..1000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
    }

    #[test]
    fn a_thread_is_read_from_outside_and_keeps_its_value_after_it_ends() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let slot = register_current(ThreadRole::Vcpu(200));
            burn(100);
            tx.send(slot.clone()).unwrap();
            go_rx.recv().unwrap();
            slot.sample_self();
        });
        let slot = rx.recv().unwrap();
        let live = slot.sample();
        assert!(live.cpu_total_ns >= 100_000_000, "{live:?}");
        assert!(
            live.cpu_user_ns + live.cpu_system_ns >= live.cpu_total_ns / 2,
            "{live:?}"
        );
        go_tx.send(()).unwrap();
        t.join().unwrap();
        // The thread is gone: its clock fails, the last value stays.
        let after = slot.sample();
        assert!(after.cpu_total_ns >= live.cpu_total_ns);
        assert_eq!(slot.sample(), after);
        assert!(sample_all()
            .iter()
            .any(|(r, _)| *r == ThreadRole::Vcpu(200)));
    }

    #[test]
    fn the_split_is_proportional_and_monotonic() {
        assert_eq!(split(1000, 3, 4, 0, 0), (750, 250));
        // Ticks that moved the ratio towards user cannot take system time back.
        assert_eq!(split(1100, 4, 4, 750, 250), (1100, 250));
        assert_eq!(split(0, 0, 0, 0, 0), (0, 0));
    }
}
