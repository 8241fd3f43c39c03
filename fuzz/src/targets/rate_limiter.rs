//! The token-bucket rate limiter that holds a tenant's disk and network I/O to its
//! configured limits (`virtio::rate_limiter`), with any bucket configuration the API
//! accepts and any sequence of requests and clock steps, on a clock the target moves.
//!
//! Property checked besides "no panic": over the whole run, each bucket admits at most its
//! one-time burst, plus a full bucket, plus what its refill rate credits over the elapsed
//! time, plus one request's worth of debt (a request larger than the bucket is let through
//! when the bucket is full and paid back afterwards). A limiter that lets more through is a
//! tenant escaping its limit.
//!
//! Input layout (little endian): `flags: u8` (bit 0: a bandwidth bucket, bit 1: an ops
//! bucket, bits 2/3: they have a one-time burst), then for each bucket present `size: u64,
//! one_time_burst: u64, refill_time_ms: u64`, then steps of 5 bytes, `kind: u8, arg: u32`:
//! kind % 3 = 0 moves the clock by `arg` microseconds, 1 asks for a request of `arg` bytes,
//! 2 delivers the limiter's timer event (see `run`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio::rate_limiter::{Clock, RateLimiter, RateLimiterConfig, TokenBucketConfig};

use crate::input::Input;

#[derive(Debug, Default)]
struct ManualClock(AtomicU64);

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What one bucket admitted, to check against its configuration.
#[derive(Debug, Default)]
struct Tally {
    admitted: u128,
    largest: u128,
}

impl Tally {
    fn add(&mut self, tokens: u64) {
        self.admitted += u128::from(tokens);
        self.largest = self.largest.max(u128::from(tokens));
    }

    fn check(&self, name: &str, cfg: &Option<TokenBucketConfig>, elapsed_ns: u64) {
        let Some(b) = cfg else { return };
        if b.size == 0 || b.refill_time == 0 {
            return; // disabled bucket
        }
        let size = u128::from(b.size);
        let period_ns = u128::from(b.refill_time) * 1_000_000;
        let refilled = u128::from(elapsed_ns) * size / period_ns;
        let bound = u128::from(b.one_time_burst.unwrap_or(0)) + size + refilled + self.largest;
        assert!(
            self.admitted <= bound,
            "{name} bucket {b:?} admitted {} in {elapsed_ns} ns, more than {bound}",
            self.admitted
        );
    }
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let mut bucket = |present: u8, burst: u8| {
        (flags & present != 0).then(|| {
            let size = input.u64();
            let one_time_burst = input.u64();
            let refill_time = input.u64();
            TokenBucketConfig {
                size,
                one_time_burst: (flags & burst != 0).then_some(one_time_burst),
                refill_time,
            }
        })
    };
    let cfg = RateLimiterConfig {
        bandwidth: bucket(1, 4),
        ops: bucket(2, 8),
    };
    let clock = Arc::new(ManualClock::default());
    let mut limiter = match RateLimiter::with_clock(&cfg, clock.clone()) {
        Ok(l) => l,
        Err(e) => panic!("cannot create a rate limiter: {e}"),
    };
    let (mut bytes, mut ops) = (Tally::default(), Tally::default());
    let mut elapsed_ns: u64 = 0;
    while !input.is_empty() {
        let kind = input.u8();
        let arg = input.u32();
        match kind % 3 {
            0 => {
                elapsed_ns = elapsed_ns.saturating_add(u64::from(arg) * 1000);
                clock.0.store(elapsed_ns, Ordering::Relaxed);
            }
            1 => {
                let blocked = limiter.is_blocked();
                if limiter.consume_request(u64::from(arg)) {
                    assert!(
                        !blocked,
                        "a request passed while the limiter waited for its timer"
                    );
                    bytes.add(u64::from(arg));
                    ops.add(1);
                } else {
                    assert!(
                        limiter.is_blocked(),
                        "a refused request left the timer unarmed"
                    );
                }
            }
            _ => {
                // The timer's event. Its timerfd runs on real time, which does not pass here,
                // so the target disarms it the way a runtime `PATCH` does (same state after:
                // unblocked, buckets as the target's clock left them) instead of reading it.
                limiter.update(None, None);
                assert!(!limiter.is_blocked(), "still blocked after the timer event");
            }
        }
    }
    bytes.check("bandwidth", &cfg.bandwidth, elapsed_ns);
    ops.check("ops", &cfg.ops, elapsed_ns);
}

/// Seeds: both buckets with a burst and a steady stream; a bandwidth bucket meeting a
/// request larger than itself; tiny and enormous refill times.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let bucket = |size: u64, burst: u64, refill: u64| {
        let mut b = size.to_le_bytes().to_vec();
        b.extend_from_slice(&burst.to_le_bytes());
        b.extend_from_slice(&refill.to_le_bytes());
        b
    };
    let step = |kind: u8, arg: u32| {
        let mut s = vec![kind];
        s.extend_from_slice(&arg.to_le_bytes());
        s
    };
    let stream = |request: u32, gap_us: u32, n: usize| {
        let mut s = Vec::new();
        for _ in 0..n {
            s.extend(step(1, request));
            s.extend(step(2, 0));
            s.extend(step(0, gap_us));
        }
        s
    };
    let mut both = vec![1 | 2 | 4 | 8];
    both.extend(bucket(1 << 20, 1 << 16, 100));
    both.extend(bucket(100, 10, 1000));
    both.extend(stream(4096, 500, 64));
    let mut oversize = vec![1];
    oversize.extend(bucket(4096, 0, 10));
    oversize.extend(stream(65_536, 1000, 16));
    let mut extremes = vec![1 | 2];
    extremes.extend(bucket(u64::MAX, 0, 1));
    extremes.extend(bucket(1, 0, u64::MAX));
    extremes.extend(stream(u32::MAX, u32::MAX, 8));
    vec![
        ("both-buckets", both),
        ("oversize-requests", oversize),
        ("extremes", extremes),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "more than")]
    fn the_bound_catches_a_bucket_that_admits_too_much() {
        let mut t = Tally::default();
        for _ in 0..3 {
            t.add(100);
        }
        let b = TokenBucketConfig {
            size: 100,
            one_time_burst: None,
            refill_time: 1000,
        };
        // 1 ms of a 100-per-second bucket: at most 100 + 0 + one 100 request of debt.
        t.check("bandwidth", &Some(b), 1_000_000);
    }

    #[test]
    fn a_steady_stream_is_throttled_and_served() {
        let (_, input) = seeds().into_iter().next().unwrap_or_default();
        run(&input);
    }
}
