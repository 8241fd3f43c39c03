//! Rate limiter configuration: two token buckets, as in Firecracker's `RateLimiter` object.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// One token bucket. A bucket with `size` 0 or `refill_time` 0 limits nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Tokens the bucket holds when full (bytes or operations).
    pub size: u64,
    /// Initial extra tokens, spent before the bucket starts to refill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill an empty bucket completely.
    pub refill_time: u64,
}

impl TokenBucketConfig {
    /// Whether this bucket limits anything.
    pub fn is_active(&self) -> bool {
        self.size > 0 && self.refill_time > 0
    }

    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        // The refill rate is size / refill_time; a refill time over a day is surely a unit error
        // (seconds or microseconds given for milliseconds).
        const MAX_REFILL_MS: u64 = 24 * 3600 * 1000;
        if self.refill_time > MAX_REFILL_MS {
            return Err(ConfigError::invalid(
                format!("{field}.refill_time"),
                format!(
                    "{} ms is over the limit of {MAX_REFILL_MS} ms",
                    self.refill_time
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes per refill period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Operations (requests, frames) per refill period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if let Some(b) = &self.bandwidth {
            b.validate(&format!("{field}.bandwidth"))?;
        }
        if let Some(o) = &self.ops {
            o.validate(&format!("{field}.ops"))?;
        }
        Ok(())
    }

    /// Whether either bucket limits anything.
    pub fn is_active(&self) -> bool {
        self.bandwidth.is_some_and(|b| b.is_active()) || self.ops.is_some_and(|o| o.is_active())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_firecrackers_shape() {
        let r: RateLimiterConfig = serde_json::from_str(
            r#"{"bandwidth": {"size": 1048576, "refill_time": 1000, "one_time_burst": 0},
                "ops": {"size": 100, "refill_time": 1000}}"#,
        )
        .unwrap();
        assert!(r.is_active());
        assert_eq!(r.ops.unwrap().one_time_burst, None);
        assert!(r.validate("drives[0].rate_limiter").is_ok());
    }

    #[test]
    fn inactive_buckets_and_absurd_refill_times() {
        let zero = TokenBucketConfig {
            size: 0,
            one_time_burst: None,
            refill_time: 100,
        };
        assert!(!zero.is_active());
        let slow = TokenBucketConfig {
            size: 1,
            one_time_burst: None,
            refill_time: u64::MAX,
        };
        let e = slow.validate("x").unwrap_err().to_string();
        assert!(e.contains("x.refill_time"), "{e}");
        assert!(
            serde_json::from_str::<TokenBucketConfig>(r#"{"size": -1, "refill_time": 1}"#).is_err()
        );
    }
}
