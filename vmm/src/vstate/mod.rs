//! KVM state: the KVM handle, the VM, guest memory and the vCPUs.

pub mod kvm;
pub mod memory;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
pub mod vm_state;
