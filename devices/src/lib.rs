//! Legacy devices and the bus that routes vCPU I/O exits to them.
//!
//! Nothing here depends on KVM: interrupts leave through [`vmm_sys_util::eventfd::EventFd`]s
//! (which the VMM registers as irqfds), so every device is unit-testable without `/dev/kvm`.

pub mod bus;
pub mod legacy;
pub mod log_limiter;
pub mod trigger;

pub use bus::{Bus, BusDevice, BusError, SharedDevice};
pub use trigger::EventFdTrigger;
