//! Logging that a guest (or a broken backend) can trigger at will, held to one line per period
//! with a count of what was suppressed, so nobody can flood the host's log.

use std::time::{Duration, Instant};

/// Logs an error at most once per period, with the number of occurrences in between, so a
/// guest or a vanished tap cannot flood the log.
#[derive(Debug)]
pub struct LogLimiter {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub const fn new(period: Duration) -> Self {
        LogLimiter {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// Messages suppressed since the last one logged.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// Returns how many messages were suppressed since the last one if this one should be
    /// logged, `None` if it should be suppressed.
    pub fn check(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < self.period => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// How often a device or the transport may log a guest-caused problem.
pub const GUEST_LOG_PERIOD: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppresses_within_the_period() {
        let mut l = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), None);
        assert_eq!(l.check(), None);
        let mut l = LogLimiter::new(Duration::ZERO);
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), Some(0));
    }
}
