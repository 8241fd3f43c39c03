//! Start-up phase timestamps (`tools/bench-boot --phases`): each phase boundary is stamped
//! with CLOCK_MONOTONIC, the clock a launcher can read too, so that it can subtract its own
//! spawn time. Logged as one Debug line once the vCPUs run; silent by default.

use std::sync::Mutex;

/// At most this many marks are kept (a boot makes about a dozen): a start retried through
/// the API cannot grow the list.
const MAX_MARKS: usize = 32;

static MARKS: Mutex<Vec<(&'static str, u64)>> = Mutex::new(Vec::new());

/// CLOCK_MONOTONIC in microseconds.
pub fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000
}

/// Records that phase `name` ended now.
pub fn mark(name: &'static str) {
    let now = monotonic_us();
    let mut marks = MARKS.lock().unwrap_or_else(|e| e.into_inner());
    if marks.len() < MAX_MARKS {
        marks.push((name, now));
    }
}

/// Logs the marks so far (Debug) and forgets them.
pub fn report() {
    let marks = std::mem::take(&mut *MARKS.lock().unwrap_or_else(|e| e.into_inner()));
    if log::log_enabled!(log::Level::Debug) {
        let line: Vec<String> = marks.iter().map(|(n, t)| format!("{n}={t}")).collect();
        log::debug!("boot phases (CLOCK_MONOTONIC us): {}", line.join(" "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_bounded_and_in_order() {
        for _ in 0..MAX_MARKS + 5 {
            mark("x");
        }
        let marks = MARKS.lock().unwrap().clone();
        // Other tests may mark too (the list is global): only the bound is certain.
        assert!(marks.len() <= MAX_MARKS);
        assert!(marks.windows(2).all(|w| w[0].1 <= w[1].1));
        report();
        assert!(MARKS.lock().unwrap().is_empty());
    }
}
