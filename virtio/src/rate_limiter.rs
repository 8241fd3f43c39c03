//! Token-bucket rate limiter (bandwidth in bytes and operations), shared by block and net.
//!
//! Each bucket holds up to `size` tokens and refills completely in `refill_time` ms; an
//! optional `one_time_burst` is spent first and never refilled. A request that finds too few
//! tokens is not served: the limiter arms its timerfd for the time the bucket needs, the I/O
//! loop waits on that fd (no busy loop), then calls [`RateLimiter::event_handler`] and retries.
//! Time comes from a [`Clock`] so tests control it explicitly.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmm_sys_util::timerfd::TimerFd;

const NS_PER_MS: u128 = 1_000_000;

/// Monotonic time source in nanoseconds.
pub trait Clock: Send + Sync {
    fn now_ns(&self) -> u64;
}

/// The real monotonic clock.
#[derive(Debug)]
pub struct MonotonicClock {
    start: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock {
            start: Instant::now(),
        }
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// One bucket as configured through the API (Firecracker's `TokenBucket` object).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Tokens the bucket holds when full.
    pub size: u64,
    /// Extra tokens available once, at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill an empty bucket.
    pub refill_time: u64,
}

/// A rate limiter as configured through the API (Firecracker's `RateLimiter` object).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

/// Errors from building a rate limiter.
#[derive(Debug, thiserror::Error)]
pub enum RateLimiterError {
    #[error("cannot create the rate limiter timerfd: {0}")]
    TimerFd(vmm_sys_util::errno::Error),
}

/// Which bucket a caller draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Bytes,
    Ops,
}

/// A single token bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    size: u64,
    refill_time_ms: u64,
    one_time_burst: u64,
    budget: u64,
    /// Time up to which refills have been credited. May lie in the future after an
    /// over-sized request: that is the debt still to be paid off.
    last_update_ns: u64,
}

impl TokenBucket {
    /// `None` when the config disables the bucket (size or refill time zero).
    pub fn new(cfg: &TokenBucketConfig, now_ns: u64) -> Option<Self> {
        if cfg.size == 0 || cfg.refill_time == 0 {
            return None;
        }
        Some(TokenBucket {
            size: cfg.size,
            refill_time_ms: cfg.refill_time,
            one_time_burst: cfg.one_time_burst.unwrap_or(0),
            budget: cfg.size,
            last_update_ns: now_ns,
        })
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    pub fn one_time_burst(&self) -> u64 {
        self.one_time_burst
    }

    fn refill_period_ns(&self) -> u128 {
        u128::from(self.refill_time_ms) * NS_PER_MS
    }

    fn replenish(&mut self, now_ns: u64) {
        if now_ns <= self.last_update_ns {
            return;
        }
        let elapsed = u128::from(now_ns - self.last_update_ns);
        let period = self.refill_period_ns();
        let tokens = elapsed * u128::from(self.size) / period;
        if tokens == 0 {
            return;
        }
        let room = self.size - self.budget;
        if tokens >= u128::from(room) {
            self.budget = self.size;
            self.last_update_ns = now_ns;
        } else {
            // Credit only the time those whole tokens took, so fractions are not lost.
            self.budget += tokens as u64;
            let used_ns = tokens * period / u128::from(self.size);
            self.last_update_ns += used_ns as u64;
        }
    }

    /// Takes `tokens` if available. A request larger than the bucket is let through when the
    /// bucket is full, leaving a debt that delays the next refills.
    pub fn reduce(&mut self, mut tokens: u64, now_ns: u64) -> bool {
        let from_burst = tokens.min(self.one_time_burst);
        if from_burst == tokens {
            self.one_time_burst -= tokens;
            return true;
        }
        self.replenish(now_ns);
        tokens -= from_burst;
        if tokens <= self.budget {
            self.one_time_burst -= from_burst;
            self.budget -= tokens;
            return true;
        }
        if tokens > self.size && self.budget == self.size {
            self.one_time_burst -= from_burst;
            let extra = u128::from(tokens - self.size);
            let debt_ns = extra * self.refill_period_ns() / u128::from(self.size);
            self.budget = 0;
            self.last_update_ns = now_ns.saturating_add(u64::try_from(debt_ns).unwrap_or(u64::MAX));
            return true;
        }
        false
    }

    /// Gives back tokens taken by a request that was not served after all.
    pub fn refund(&mut self, tokens: u64) {
        self.budget = self.budget.saturating_add(tokens).min(self.size);
    }

    /// Time until `tokens` (capped at the bucket size) are available.
    pub fn wait_time(&self, tokens: u64, now_ns: u64) -> Duration {
        let want = tokens.min(self.size);
        let missing = u128::from(want.saturating_sub(self.budget));
        let debt = u128::from(self.last_update_ns.saturating_sub(now_ns));
        let ns = debt + (missing * self.refill_period_ns()).div_ceil(u128::from(self.size));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// Rate limiter over two optional buckets, with a timerfd to wait on when throttled.
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer_fd: TimerFd,
    timer_armed: bool,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("bandwidth", &self.bandwidth)
            .field("ops", &self.ops)
            .field("timer_armed", &self.timer_armed)
            .finish()
    }
}

impl RateLimiter {
    pub fn new(cfg: &RateLimiterConfig) -> Result<Self, RateLimiterError> {
        Self::with_clock(cfg, Arc::new(MonotonicClock::default()))
    }

    pub fn with_clock(
        cfg: &RateLimiterConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, RateLimiterError> {
        let now = clock.now_ns();
        Ok(RateLimiter {
            bandwidth: cfg
                .bandwidth
                .as_ref()
                .and_then(|b| TokenBucket::new(b, now)),
            ops: cfg.ops.as_ref().and_then(|b| TokenBucket::new(b, now)),
            timer_fd: TimerFd::new().map_err(RateLimiterError::TimerFd)?,
            timer_armed: false,
            clock,
        })
    }

    /// Whether no bucket is configured (every request passes).
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }

    /// Whether the limiter is waiting for its timer; callers must not serve requests then.
    pub fn is_blocked(&self) -> bool {
        self.timer_armed
    }

    pub fn bucket(&self, t: TokenType) -> Option<&TokenBucket> {
        match t {
            TokenType::Bytes => self.bandwidth.as_ref(),
            TokenType::Ops => self.ops.as_ref(),
        }
    }

    /// Takes one operation and `bytes` bytes, or nothing. On refusal the timer is armed.
    pub fn consume_request(&mut self, bytes: u64) -> bool {
        if self.timer_armed {
            return false;
        }
        let now = self.clock.now_ns();
        if let Some(ops) = self.ops.as_mut() {
            if !ops.reduce(1, now) {
                let wait = ops.wait_time(1, now);
                self.arm(wait);
                return false;
            }
        }
        if bytes > 0 {
            if let Some(bw) = self.bandwidth.as_mut() {
                if !bw.reduce(bytes, now) {
                    let wait = bw.wait_time(bytes, now);
                    if let Some(ops) = self.ops.as_mut() {
                        ops.refund(1);
                    }
                    self.arm(wait);
                    return false;
                }
            }
        }
        true
    }

    fn arm(&mut self, wait: Duration) {
        // At least 1 ms so a rounding error cannot make the loop spin.
        let wait = wait.max(Duration::from_millis(1));
        match self.timer_fd.reset(wait, None) {
            Ok(()) => self.timer_armed = true,
            Err(e) => log::error!("rate limiter: cannot arm timer: {e}"),
        }
    }

    /// Call when the timerfd is readable: clears it and unblocks the limiter.
    pub fn event_handler(&mut self) {
        // The count is irrelevant; EAGAIN means a spurious wake-up.
        let _ = self.timer_fd.wait();
        self.timer_armed = false;
    }

    /// Replaces the buckets named in `cfg` (`None` keeps the current bucket); a bucket with
    /// size 0 disables it. Used by `PATCH` at runtime.
    pub fn update(&mut self, bandwidth: Option<TokenBucketConfig>, ops: Option<TokenBucketConfig>) {
        let now = self.clock.now_ns();
        if let Some(b) = bandwidth {
            self.bandwidth = TokenBucket::new(&b, now);
        }
        if let Some(o) = ops {
            self.ops = TokenBucket::new(&o, now);
        }
        if self.timer_armed {
            // Let the new limits apply at once; the next request re-arms if needed.
            if let Err(e) = self.timer_fd.clear() {
                log::error!("rate limiter: cannot disarm timer: {e}");
            }
            self.timer_armed = false;
        }
    }
}

impl AsRawFd for RateLimiter {
    fn as_raw_fd(&self) -> RawFd {
        self.timer_fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    struct ManualClock(AtomicU64);
    impl ManualClock {
        fn advance_ms(&self, ms: u64) {
            self.0.fetch_add(ms * 1_000_000, Ordering::SeqCst);
        }
    }
    impl Clock for ManualClock {
        fn now_ns(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn bucket(size: u64, refill_time: u64, burst: Option<u64>) -> Option<TokenBucketConfig> {
        Some(TokenBucketConfig {
            size,
            one_time_burst: burst,
            refill_time,
        })
    }

    fn limiter(cfg: RateLimiterConfig) -> (RateLimiter, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        (RateLimiter::with_clock(&cfg, clock.clone()).unwrap(), clock)
    }

    #[test]
    fn bucket_refills_proportionally_to_time() {
        let cfg = RateLimiterConfig {
            bandwidth: bucket(1000, 100, None),
            ops: None,
        };
        let (mut rl, clock) = limiter(cfg);
        assert!(rl.consume_request(1000));
        assert!(!rl.consume_request(1));
        assert!(rl.is_blocked());
        rl.event_handler();
        clock.advance_ms(50); // half the refill time -> half the tokens
        assert!(rl.consume_request(500));
        assert!(!rl.consume_request(1));
        rl.event_handler();
        clock.advance_ms(1000); // refill caps at the bucket size
        assert!(rl.consume_request(1000));
        assert_eq!(rl.bucket(TokenType::Bytes).unwrap().budget(), 0);
    }

    #[test]
    fn wait_time_matches_missing_tokens() {
        let cfg = RateLimiterConfig {
            bandwidth: None,
            ops: bucket(10, 1000, None),
        };
        let (mut rl, clock) = limiter(cfg);
        for _ in 0..10 {
            assert!(rl.consume_request(0));
        }
        let b = rl.bucket(TokenType::Ops).unwrap();
        assert_eq!(b.wait_time(1, clock.now_ns()), Duration::from_millis(100));
        assert!(!rl.consume_request(0));
        assert!(rl.is_blocked());
        // Blocked until the timer event, even if time passed.
        clock.advance_ms(100);
        assert!(!rl.consume_request(0));
        rl.event_handler();
        assert!(rl.consume_request(0));
    }

    #[test]
    fn one_time_burst_is_spent_first_and_not_refilled() {
        let cfg = RateLimiterConfig {
            bandwidth: bucket(100, 1000, Some(300)),
            ops: None,
        };
        let (mut rl, clock) = limiter(cfg);
        assert!(rl.consume_request(300));
        assert_eq!(rl.bucket(TokenType::Bytes).unwrap().one_time_burst(), 0);
        assert!(rl.consume_request(100));
        assert!(!rl.consume_request(1));
        rl.event_handler();
        clock.advance_ms(10_000);
        assert!(rl.consume_request(100));
        assert_eq!(rl.bucket(TokenType::Bytes).unwrap().one_time_burst(), 0);
    }

    #[test]
    fn oversized_request_passes_when_full_and_leaves_debt() {
        let cfg = RateLimiterConfig {
            bandwidth: bucket(100, 100, None),
            ops: None,
        };
        let (mut rl, clock) = limiter(cfg);
        assert!(rl.consume_request(300)); // 200 tokens of debt = 200 ms
        clock.advance_ms(150);
        assert!(!rl.consume_request(1));
        rl.event_handler();
        clock.advance_ms(60); // 210 ms after: debt paid, 10 tokens back
        assert!(rl.consume_request(10));
        assert!(!rl.consume_request(1));
    }

    #[test]
    fn ops_refunded_when_bandwidth_refuses() {
        let cfg = RateLimiterConfig {
            bandwidth: bucket(100, 1000, None),
            ops: bucket(5, 1000, None),
        };
        let (mut rl, _clock) = limiter(cfg);
        assert!(rl.consume_request(100));
        assert_eq!(rl.bucket(TokenType::Ops).unwrap().budget(), 4);
        assert!(!rl.consume_request(50));
        assert_eq!(rl.bucket(TokenType::Ops).unwrap().budget(), 4);
    }

    #[test]
    fn update_replaces_buckets_and_unblocks() {
        let cfg = RateLimiterConfig {
            bandwidth: bucket(10, 1000, None),
            ops: None,
        };
        let (mut rl, _clock) = limiter(cfg);
        assert!(rl.consume_request(10));
        assert!(!rl.consume_request(10));
        rl.update(bucket(1000, 1000, None), None);
        assert!(!rl.is_blocked());
        assert!(rl.consume_request(500));
        rl.update(bucket(0, 0, None), None);
        assert!(rl.is_unlimited());
        assert!(rl.consume_request(u64::MAX));
    }

    #[test]
    fn config_parses_firecracker_json() {
        let cfg: RateLimiterConfig = serde_json::from_str(
            r#"{"bandwidth":{"size":1048576,"one_time_burst":0,"refill_time":1000},
                "ops":{"size":100,"refill_time":1000}}"#,
        )
        .unwrap();
        assert_eq!(cfg.ops.unwrap().size, 100);
        assert!(serde_json::from_str::<RateLimiterConfig>(r#"{"bw":{}}"#).is_err());
    }
}
