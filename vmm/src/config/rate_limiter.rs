//! Rate limiter configuration: two token buckets, as in Firecracker's `RateLimiter` object.
//! The types live in the `virtio` crate, whose devices consume them; this adds validation.

use super::ConfigError;

pub use virtio::rate_limiter::{RateLimiterConfig, TokenBucketConfig};

/// Whether a bucket limits anything: one with `size` 0 or `refill_time` 0 does not.
pub fn bucket_is_active(b: &TokenBucketConfig) -> bool {
    b.size > 0 && b.refill_time > 0
}

/// Whether either bucket of a limiter limits anything.
pub fn limiter_is_active(r: &RateLimiterConfig) -> bool {
    r.bandwidth.as_ref().is_some_and(bucket_is_active)
        || r.ops.as_ref().is_some_and(bucket_is_active)
}

pub(crate) fn validate_bucket(b: &TokenBucketConfig, field: &str) -> Result<(), ConfigError> {
    // The refill rate is size / refill_time; a refill time over a day is surely a unit error
    // (seconds or microseconds given for milliseconds).
    const MAX_REFILL_MS: u64 = 24 * 3600 * 1000;
    if b.refill_time > MAX_REFILL_MS {
        return Err(ConfigError::invalid(
            format!("{field}.refill_time"),
            format!(
                "{} ms is over the limit of {MAX_REFILL_MS} ms",
                b.refill_time
            ),
        ));
    }
    Ok(())
}

pub(crate) fn validate_limiter(r: &RateLimiterConfig, field: &str) -> Result<(), ConfigError> {
    if let Some(b) = &r.bandwidth {
        validate_bucket(b, &format!("{field}.bandwidth"))?;
    }
    if let Some(o) = &r.ops {
        validate_bucket(o, &format!("{field}.ops"))?;
    }
    Ok(())
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
        assert!(limiter_is_active(&r));
        assert_eq!(r.ops.unwrap().one_time_burst, None);
        assert!(validate_limiter(&r, "drives[0].rate_limiter").is_ok());
    }

    #[test]
    fn inactive_buckets_and_absurd_refill_times() {
        let zero = TokenBucketConfig {
            size: 0,
            one_time_burst: None,
            refill_time: 100,
        };
        assert!(!bucket_is_active(&zero));
        let slow = TokenBucketConfig {
            size: 1,
            one_time_burst: None,
            refill_time: u64::MAX,
        };
        let e = validate_bucket(&slow, "x").unwrap_err().to_string();
        assert!(e.contains("x.refill_time"), "{e}");
        assert!(
            serde_json::from_str::<TokenBucketConfig>(r#"{"size": -1, "refill_time": 1}"#).is_err()
        );
    }
}
