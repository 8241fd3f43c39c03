//! `serial`: where the guest's serial console output goes.

use serde::{Deserialize, Serialize};

use super::rate_limiter::validate_bucket;
use super::{validate_path, ConfigError, TokenBucketConfig};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// A file or named pipe that receives the console output instead of stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<String>,
    /// Output beyond this budget is dropped and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<TokenBucketConfig>,
}

impl SerialConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(p) = &self.serial_out_path {
            validate_path("serial.serial_out_path", p)?;
        }
        if let Some(r) = &self.rate_limiter {
            validate_bucket(r, "serial.rate_limiter")?;
        }
        Ok(())
    }
}
