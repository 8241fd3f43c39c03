//! Resource limits (`--resource-limit`), applied before the exec so the jailed
//! process inherits them and, without privileges, cannot raise them.

use std::io;

use crate::args::Resource;
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("set resource limit {name}={value}: {source}")]
    Set {
        name: &'static str,
        value: u64,
        source: io::Error,
    },
}

fn describe(resource: Resource) -> (&'static str, libc::__rlimit_resource_t) {
    match resource {
        Resource::FileSize => ("fsize", libc::RLIMIT_FSIZE),
        Resource::OpenFiles => ("no-file", libc::RLIMIT_NOFILE),
    }
}

/// Applies the limits in order (a later value for the same resource wins).
pub fn apply(limits: &[(Resource, u64)]) -> Result<(), LimitsError> {
    for &(resource, value) in limits {
        let (name, raw) = describe(resource);
        sys::setrlimit(raw, value).map_err(|source| LimitsError::Set {
            name,
            value,
            source,
        })?;
    }
    Ok(())
}
