use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use devices::BusDevice;
use virtio_bindings::bindings::virtio_blk::*;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::block::{Block, BlockConfig, CacheType, IoEngine};
use crate::device::{ActivateError, VirtioDevice};
use crate::io_thread::{IoSubscriber, IoThread};
use crate::test_utils::{guest_memory, wait_readable};

#[derive(Default)]
struct Dummy {
    acked: u64,
    activations: usize,
    resets: usize,
    fail_activate: bool,
    config: [u8; 8],
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 32]
    }
    fn avail_features(&self) -> u64 {
        (1 << 3) | (1 << 35)
    }
    fn acked_features(&self) -> u64 {
        self.acked
    }
    fn set_acked_features(&mut self, f: u64) {
        self.acked = f;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = *self.config.get(offset as usize + i).unwrap_or(&0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.config[offset as usize] = data[0];
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::Backend("test".into()));
        }
        assert_eq!(ctx.queues.len(), 2);
        self.activations += 1;
        Ok(())
    }
    fn reset(&mut self) {
        self.resets += 1;
    }
    fn is_activated(&self) -> bool {
        self.activations > 0
    }
}

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn transport() -> (MmioTransport, Arc<Mutex<Dummy>>) {
    let dev = Arc::new(Mutex::new(Dummy::default()));
    (
        MmioTransport::new(guest_memory(), dev.clone()).unwrap(),
        dev,
    )
}

/// Drives the status up to FEATURES_OK, accepting VERSION_1 and `extra`.
fn negotiate(t: &mut MmioTransport, extra: u64) {
    wr(t, 0x70, ACKNOWLEDGE);
    wr(t, 0x70, ACKNOWLEDGE | DRIVER);
    let f = (1u64 << VIRTIO_F_VERSION_1) | extra;
    wr(t, 0x24, 0);
    wr(t, 0x20, f as u32);
    wr(t, 0x24, 1);
    wr(t, 0x20, (f >> 32) as u32);
    wr(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
}

/// Sets up queue `i` with rings at `base`.
fn setup_queue(t: &mut MmioTransport, i: u32, size: u32, base: u64) {
    wr(t, 0x30, i);
    wr(t, 0x38, size);
    wr(t, 0x80, base as u32);
    wr(t, 0x84, (base >> 32) as u32);
    wr(t, 0x90, (base + 0x1000) as u32);
    wr(t, 0x94, 0);
    wr(t, 0xa0, (base + 0x2000) as u32);
    wr(t, 0xa4, 0);
    wr(t, 0x44, 1);
}

#[test]
fn identification_registers() {
    let (mut t, _) = transport();
    assert_eq!(rd(&mut t, 0x00), 0x7472_6976);
    assert_eq!(rd(&mut t, 0x04), 2);
    assert_eq!(rd(&mut t, 0x08), 42);
    assert_eq!(rd(&mut t, 0x0c), 0);
    // Narrow accesses to registers are refused (read as zero).
    let mut b = [0xffu8; 2];
    t.read(0, &mut b);
    assert_eq!(b, [0, 0]);
}

#[test]
fn feature_windows() {
    let (mut t, _) = transport();
    wr(&mut t, 0x14, 0);
    assert_eq!(rd(&mut t, 0x10), 1 << 3);
    wr(&mut t, 0x14, 1);
    assert_eq!(rd(&mut t, 0x10), (1 << 0) | (1 << 3)); // VERSION_1 (bit 32) and bit 35
    wr(&mut t, 0x14, 7);
    assert_eq!(rd(&mut t, 0x10), 0);
}

#[test]
fn status_machine_refuses_illegal_transitions() {
    let (mut t, dev) = transport();
    wr(&mut t, 0x70, DRIVER); // DRIVER before ACKNOWLEDGE
    assert_eq!(rd(&mut t, 0x70), 0);
    wr(&mut t, 0x70, ACKNOWLEDGE);
    wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK); // skips DRIVER
    assert_eq!(rd(&mut t, 0x70), ACKNOWLEDGE);
    wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER);
    // FEATURES_OK refused without VERSION_1.
    wr(&mut t, 0x20, 1 << 3);
    wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(rd(&mut t, 0x70), ACKNOWLEDGE | DRIVER);
    // ... and with a feature that was not offered.
    wr(&mut t, 0x24, 1);
    wr(&mut t, 0x20, 1 | (1 << 5));
    wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(rd(&mut t, 0x70), ACKNOWLEDGE | DRIVER);
    wr(&mut t, 0x20, 1);
    wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(rd(&mut t, 0x70), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(dev.lock().unwrap().acked, (1 << 3) | (1 << 32));
    // Features are frozen after FEATURES_OK.
    wr(&mut t, 0x24, 0);
    wr(&mut t, 0x20, 0);
    assert_eq!(dev.lock().unwrap().acked, (1 << 3) | (1 << 32));
    // Clearing a bit without reset is refused.
    wr(&mut t, 0x70, ACKNOWLEDGE);
    assert_eq!(rd(&mut t, 0x70), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    // FAILED is always accepted.
    wr(&mut t, 0x70, FAILED);
    assert_ne!(rd(&mut t, 0x70) & FAILED, 0);
}

#[test]
fn queue_configuration_is_validated() {
    let (mut t, _) = transport();
    // Queue registers are ignored before FEATURES_OK.
    wr(&mut t, 0x30, 0);
    wr(&mut t, 0x38, 8);
    wr(&mut t, 0x44, 1);
    assert_eq!(rd(&mut t, 0x44), 0);
    negotiate(&mut t, 0);
    assert_eq!(rd(&mut t, 0x34), 16);
    wr(&mut t, 0x30, 5);
    assert_eq!(rd(&mut t, 0x34), 0); // no queue 5
                                     // Not a power of two / above the maximum.
    for size in [12u32, 32, 0, 0x1_0000] {
        wr(&mut t, 0x30, 0);
        wr(&mut t, 0x38, size);
        wr(&mut t, 0x80, 0x10000);
        wr(&mut t, 0x90, 0x11000);
        wr(&mut t, 0xa0, 0x12000);
        wr(&mut t, 0x44, 1);
        assert_eq!(rd(&mut t, 0x44), 0, "size {size} accepted");
    }
    // Misaligned descriptor table, used ring.
    wr(&mut t, 0x38, 16);
    wr(&mut t, 0x80, 0x10008);
    wr(&mut t, 0x44, 1);
    assert_eq!(rd(&mut t, 0x44), 0);
    wr(&mut t, 0x80, 0x10000);
    wr(&mut t, 0xa0, 0x12002);
    wr(&mut t, 0x44, 1);
    assert_eq!(rd(&mut t, 0x44), 0);
    // Rings outside guest memory (16 MiB).
    wr(&mut t, 0xa0, 0x12000);
    wr(&mut t, 0x84, 1);
    wr(&mut t, 0x44, 1);
    assert_eq!(rd(&mut t, 0x44), 0);
    wr(&mut t, 0x84, 0);
    wr(&mut t, 0x80, 0xfff_fff0);
    wr(&mut t, 0x44, 1);
    assert_eq!(rd(&mut t, 0x44), 0);
    // Valid.
    setup_queue(&mut t, 0, 16, 0x10000);
    assert_eq!(rd(&mut t, 0x44), 1);
    // A ready queue can't be moved.
    wr(&mut t, 0x80, 0x20000);
    assert_eq!(t.queues[0].desc, 0x10000);
}

#[test]
fn driver_ok_activates_and_reset_clears() {
    let (mut t, dev) = transport();
    negotiate(&mut t, 1 << 3);
    setup_queue(&mut t, 0, 16, 0x10000);
    wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(dev.lock().unwrap().activations, 1);
    // Notifications are forwarded to the queue EventFd when no ioeventfd caught them.
    wr(&mut t, 0x50, 1);
    assert_eq!(t.queue_evts()[1].read().unwrap(), 1);
    wr(&mut t, 0x50, 9); // unknown queue: ignored
                         // Interrupt status and ack.
    t.interrupt()
        .trigger(crate::device::InterruptType::Vring)
        .unwrap();
    assert_eq!(rd(&mut t, 0x60), 1);
    assert_eq!(t.irq_evt().read().unwrap(), 1);
    wr(&mut t, 0x64, 1);
    assert_eq!(rd(&mut t, 0x60), 0);
    // Config space and generation.
    t.write(0x100, &[9]);
    let mut b = [0u8; 1];
    t.read(0x100, &mut b);
    assert_eq!(b[0], 9);
    let g = rd(&mut t, 0xfc);
    t.interrupt()
        .trigger(crate::device::InterruptType::Config)
        .unwrap();
    assert_eq!(rd(&mut t, 0xfc), g + 1);
    // Reset.
    wr(&mut t, 0x70, 0);
    assert_eq!(rd(&mut t, 0x70), 0);
    assert_eq!(dev.lock().unwrap().resets, 1);
    assert_eq!(rd(&mut t, 0x60), 0);
    wr(&mut t, 0x30, 0);
    assert_eq!(rd(&mut t, 0x44), 0);
}

#[test]
fn failed_activation_sets_needs_reset() {
    let (mut t, dev) = transport();
    dev.lock().unwrap().fail_activate = true;
    negotiate(&mut t, 0);
    setup_queue(&mut t, 0, 16, 0x10000);
    wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_ne!(rd(&mut t, 0x70) & DEVICE_NEEDS_RESET, 0);
    assert_eq!(rd(&mut t, 0x60) & 2, 2);
    wr(&mut t, 0x70, 0);
    assert_eq!(rd(&mut t, 0x70), 0);
}

#[test]
fn repeated_failed_activations_log_once_per_period() {
    let (mut t, dev) = transport();
    dev.lock().unwrap().fail_activate = true;
    for _ in 0..100 {
        negotiate(&mut t, 0);
        setup_queue(&mut t, 0, 16, 0x10000);
        wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_ne!(rd(&mut t, 0x70) & DEVICE_NEEDS_RESET, 0);
        wr(&mut t, 0x70, 0);
    }
    assert_eq!(t.guest_log.suppressed(), 99);
}

/// The whole path: transport on "a vCPU", block device served by the io thread, completion
/// signalled through the irq EventFd.
#[test]
fn block_served_on_io_thread_end_to_end() {
    let mem = guest_memory();
    let file = TempFile::new_with_prefix("/tmp/xenia-e2e").unwrap();
    file.as_file().set_len(64 * 512).unwrap();
    let block = Arc::new(Mutex::new(
        Block::new(&BlockConfig {
            drive_id: "e2e".into(),
            path_on_host: file.as_path().to_path_buf(),
            is_read_only: false,
            cache_type: CacheType::Writeback,
            io_engine: IoEngine::Sync,
            rate_limiter: None,
        })
        .unwrap(),
    ));
    let mut io = IoThread::new().unwrap();
    io.add_subscriber(block.clone() as IoSubscriber);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let handle = io
        .start(move || {
            started_tx
                .send(std::thread::current().name().map(String::from))
                .unwrap();
            Ok(())
        })
        .unwrap();
    assert_eq!(started_rx.recv().unwrap().as_deref(), Some("io"));

    let mut t = MmioTransport::new(mem.clone(), block.clone()).unwrap();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    negotiate(&mut t, 1 << VIRTIO_BLK_F_FLUSH);
    wr(&mut t, 0x30, 0);
    wr(&mut t, 0x38, 16);
    wr(&mut t, 0x80, vq.desc_table_addr().0 as u32);
    wr(&mut t, 0x90, vq.avail_addr().0 as u32);
    wr(&mut t, 0xa0, vq.used_addr().0 as u32);
    wr(&mut t, 0x44, 1);
    assert_eq!(rd(&mut t, 0x44), 1);
    wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(block.lock().unwrap().is_activated());

    // GET_ID: header, 20-byte buffer, status.
    mem.write_obj(VIRTIO_BLK_T_GET_ID, GuestAddress(0x10_0000))
        .unwrap();
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(0x10_0000, 16, 1, 1)),
        RawDescriptor::from(SplitDescriptor::new(0x20_0000, 20, 3, 2)),
        RawDescriptor::from(SplitDescriptor::new(0x30_0000, 1, 2, 0)),
    ];
    vq.add_desc_chains(&descs, 0).unwrap();
    // What KVM does on the QueueNotify write when the ioeventfd is registered.
    t.queue_evts()[0].write(1).unwrap();
    assert!(
        wait_readable(t.irq_evt().as_raw_fd()),
        "no interrupt from the io thread"
    );
    assert_eq!(rd(&mut t, 0x60) & 1, 1);
    assert_eq!(vq.used().idx().load(), 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x30_0000)).unwrap(), 0);
    let mut id = [0u8; 3];
    mem.read_slice(&mut id, GuestAddress(0x20_0000)).unwrap();
    assert_eq!(&id, b"e2e");

    // Reset from the vCPU side; the io thread unregisters the queue fd.
    wr(&mut t, 0x70, 0);
    assert!(!block.lock().unwrap().is_activated());
    handle.stop().unwrap();
    assert_eq!(block.lock().unwrap().metrics().snapshot().get_id_count, 1);
    assert!(!t.interrupt().needs_reset());
}

#[test]
fn a_guest_hammering_bad_writes_gets_one_log_line_per_period() {
    let (mut t, _) = transport();
    // Queue registers before FEATURES_OK: refused, and each refusal would be a warning.
    for _ in 0..1000 {
        wr(&mut t, 0x38, 16);
    }
    assert_eq!(t.guest_log.suppressed(), 999);
}
