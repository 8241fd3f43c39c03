//! The KVM VM: in-kernel irqchip and PIT, memory slots, irqfds.

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::VmFd;
use virtio::GuestMemoryMmap;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use super::kvm::KvmContext;
use crate::arch::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};

/// Errors while creating or configuring the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("KVM_CREATE_VM failed: {0}")]
    Create(kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR failed: {0}")]
    TssAddress(kvm_ioctls::Error),
    #[error("KVM_SET_IDENTITY_MAP_ADDR failed: {0}")]
    IdentityMap(kvm_ioctls::Error),
    #[error("KVM_CREATE_IRQCHIP failed: {0}")]
    Irqchip(kvm_ioctls::Error),
    #[error("KVM_CREATE_PIT2 failed: {0}")]
    Pit(kvm_ioctls::Error),
    #[error("guest memory region at {addr:#x} has no host mapping: {source}")]
    HostAddress {
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
    #[error(
        "KVM_SET_USER_MEMORY_REGION for slot {slot} ({addr:#x}, {size:#x} bytes) failed: {source}"
    )]
    MemoryRegion {
        slot: u32,
        addr: u64,
        size: u64,
        source: kvm_ioctls::Error,
    },
    #[error("the thread registering guest memory with KVM ended without an answer")]
    RegistrationThread,
    #[error("KVM_IRQFD for GSI {gsi} failed: {source}")]
    Irqfd { gsi: u32, source: kvm_ioctls::Error },
}

/// A VM with its interrupt controllers and the guest memory its KVM slots point at.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
    /// What [`Vm::register_memory`] registered (empty before). `GuestMemoryMmap` shares its
    /// regions through `Arc`s, so this clone keeps every mapping a slot points at alive for
    /// as long as the VM (and each vCPU, which holds another clone) exists, whatever the
    /// caller does with its own handle.
    memory: GuestMemoryMmap,
}

impl Vm {
    /// Creates the VM with the in-kernel LAPICs/IOAPIC/PIC and PIT.
    pub fn new(kvm: &KvmContext) -> Result<Self, VmError> {
        let fd = kvm.kvm.create_vm().map_err(VmError::Create)?;
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(VmError::TssAddress)?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(VmError::IdentityMap)?;
        fd.create_irq_chip().map_err(VmError::Irqchip)?;
        let pit = kvm_pit_config {
            // The PC speaker port is claimed by KVM's PIT so that guests probing it do not
            // exit to user space.
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::Pit)?;
        Ok(Self {
            fd,
            memory: GuestMemoryMmap::default(),
        })
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The registered guest memory (empty before [`Vm::register_memory`]).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Registers every region of `mem` with KVM, one slot each (the fewest possible: this
    /// ioctl dominates start-up time), and keeps a clone of `mem` so that the mappings live
    /// as long as the VM. Call it once.
    pub fn register_memory(
        &mut self,
        mem: &GuestMemoryMmap,
        track_dirty_pages: bool,
    ) -> Result<(), VmError> {
        self.keep_memory(mem);
        self.register_slots(track_dirty_pages)
    }

    /// Keeps a clone of `mem` (its mappings live as long as the VM) for
    /// [`register_slots`](Self::register_slots), which may then run on another thread while
    /// this one goes on with the VM's set-up.
    pub fn keep_memory(&mut self, mem: &GuestMemoryMmap) {
        self.memory = mem.clone();
    }

    /// Registers every region of the kept memory with KVM. Under PVM each call waits 5-11 ms
    /// in the kernel (an SRCU grace period as the slot is published), mostly off-CPU: the
    /// builder runs it on a helper thread. Call it once.
    pub fn register_slots(&self, track_dirty_pages: bool) -> Result<(), VmError> {
        let mem = &self.memory;
        let flags = if track_dirty_pages {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        };
        for (slot, region) in mem.iter().enumerate() {
            let addr = region.start_addr().raw_value();
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|source| VmError::HostAddress { addr, source })?;
            let slot = slot as u32;
            let desc = kvm_userspace_memory_region {
                slot,
                flags,
                guest_phys_addr: addr,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: `host` maps `region.len()` bytes of `region`, an `Arc`-shared region of
            // `self.memory`, which keeps it mapped as long as this VM exists,
            // and each vCPU holds its own clone, so the slot never points at unmapped memory
            // while KVM can use it. (If this call fails, the slot was not created.)
            unsafe { self.fd.set_user_memory_region(desc) }.map_err(|source| {
                VmError::MemoryRegion {
                    slot,
                    addr,
                    size: region.len(),
                    source,
                }
            })?;
        }
        fail_injected_for_tests(mem)
    }

    /// Makes a write to `evt` raise `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })
    }
}

/// Debug builds only: `XENIA_TEST_FAIL_MEMORY_REGISTRATION` set in the environment makes the
/// registration fail after the real ioctl, so that the integration tests can check how an
/// overlapped start reports it and what it leaves behind.
fn fail_injected_for_tests(mem: &GuestMemoryMmap) -> Result<(), VmError> {
    if cfg!(debug_assertions) && std::env::var_os("XENIA_TEST_FAIL_MEMORY_REGISTRATION").is_some() {
        return Err(VmError::MemoryRegion {
            slot: 0,
            addr: 0,
            size: mem.iter().map(|r| r.len()).sum(),
            source: kvm_ioctls::Error::new(libc::EINVAL),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    use super::*;
    use crate::config::HugePages;
    use crate::vstate::memory::create_guest_memory;

    /// True when `addr` lies in one of this process's mappings.
    fn mapped(addr: usize) -> bool {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once(' ')?.0.split_once('-'))
            .filter_map(|(s, e)| {
                Some((
                    usize::from_str_radix(s, 16).ok()?,
                    usize::from_str_radix(e, 16).ok()?,
                ))
            })
            .any(|(s, e)| (s..e).contains(&addr))
    }

    #[test]
    fn the_vm_keeps_registered_memory_mapped() {
        let Some(kvm) = crate::vstate::kvm::open_for_tests() else {
            return;
        };
        let mut vm = Vm::new(&kvm).unwrap();
        let mem = create_guest_memory(2 << 20, HugePages::None).unwrap();
        vm.register_memory(&mem, false).unwrap();
        let host = mem.get_host_address(GuestAddress(0x1000)).unwrap() as usize;
        // The caller's handle goes away: the KVM slot still points at `host`.
        drop(mem);
        assert!(
            mapped(host),
            "guest memory was unmapped under a live KVM slot"
        );
        vm.memory().write_obj(7u64, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            vm.memory().read_obj::<u64>(GuestAddress(0x1000)).unwrap(),
            7
        );
        drop(vm);
        assert!(!mapped(host), "the VM's last handle unmaps the memory");
    }
}
