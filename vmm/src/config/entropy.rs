//! `entropy`: the virtio-rng device (`PUT /entropy`, pre-boot only), Firecracker's shape.

use serde::{Deserialize, Serialize};

use super::rate_limiter::validate_limiter;
use super::{ConfigError, RateLimiterConfig};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyDeviceConfig {
    /// Bytes and requests the guest may take; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl EntropyDeviceConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(r) = &self.rate_limiter {
            validate_limiter(r, "entropy.rate_limiter")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_limited_bodies_parse_and_unknown_fields_do_not() {
        let c: EntropyDeviceConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, EntropyDeviceConfig::default());
        let c: EntropyDeviceConfig = serde_json::from_str(
            r#"{"rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#,
        )
        .unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(c.rate_limiter.unwrap().bandwidth.unwrap().size, 1000);
        assert!(serde_json::from_str::<EntropyDeviceConfig>(r#"{"rate": 1}"#).is_err());
        let bad: EntropyDeviceConfig = serde_json::from_str(
            r#"{"rate_limiter": {"ops": {"size": 1, "refill_time": 999999999999}}}"#,
        )
        .unwrap();
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("entropy.rate_limiter.ops.refill_time"), "{e}");
    }
}
