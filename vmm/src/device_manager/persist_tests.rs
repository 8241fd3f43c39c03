#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};

use devices::legacy::{SerialConsole, I8042};
use devices::{BusDevice, EventFdTrigger};
use virtio::block::{Block, BlockConfig, ImageFormat};
use virtio::GuestMemoryMmap;
use virtio::VirtioDevice;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::config::{CacheType, HugePages, IoEngine};
use crate::device_manager::mmio::MmioDevice;
use crate::vstate::memory::create_guest_memory;

struct Images(PathBuf);

impl Images {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("xenia-dm-persist-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Images(p)
    }

    fn image(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
        p
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A VM's devices without KVM: the legacy pair and drives on transports, in the given order.
struct Set {
    legacy: LegacyDevices,
    drives: Vec<BlockDevice>,
}

impl Set {
    fn new(mem: &GuestMemoryMmap, drives: &[(&str, &Path, MmioSlot)]) -> Self {
        let irq = EventFdTrigger::new_nonblocking().unwrap();
        let legacy = LegacyDevices {
            serial: Arc::new(Mutex::new(SerialConsole::new(
                irq,
                Box::new(std::io::sink()),
            ))),
            i8042: Arc::new(Mutex::new(I8042::new(
                EventFdTrigger::new_nonblocking().unwrap(),
                EventFdTrigger::new_nonblocking().unwrap(),
            ))),
            reset_evt: EventFd::new(EFD_NONBLOCK).unwrap(),
        };
        let drives = drives
            .iter()
            .map(|&(id, path, slot)| {
                let block = Block::new(&BlockConfig {
                    drive_id: id.into(),
                    path_on_host: path.to_path_buf(),
                    is_read_only: false,
                    cache_type: CacheType::Unsafe,
                    io_engine: IoEngine::Sync,
                    rate_limiter: None,
                    image_format: ImageFormat::Raw,
                })
                .unwrap();
                let device = Arc::new(Mutex::new(block));
                let transport = MmioTransport::new(mem.clone(), device.clone()).unwrap();
                BlockDevice {
                    drive_id: id.into(),
                    device,
                    mmio: MmioDevice {
                        slot,
                        transport: Arc::new(Mutex::new(transport)),
                    },
                }
            })
            .collect();
        Set { legacy, drives }
    }

    fn devices(&self) -> DeviceSet<'_> {
        DeviceSet {
            legacy: &self.legacy,
            drives: &self.drives,
            nets: &[],
            entropy: None,
            balloon: None,
            vsock: None,
        }
    }
}

fn slot(i: u64) -> MmioSlot {
    MmioSlot {
        base: 0xD000_0000 + i * 0x1000,
        irq: 5 + i as u32,
    }
}

fn wr(t: &Arc<Mutex<MmioTransport>>, off: u64, v: u32) {
    t.lock().unwrap().write(off, &v.to_le_bytes());
}

/// Negotiates every offered feature, places queue 0 at 0x1000 and sets DRIVER_OK.
fn start_driver(d: &BlockDevice) {
    let t = &d.mmio.transport;
    let features = d.device.lock().unwrap().avail_features();
    for s in [1, 3] {
        wr(t, 0x70, s);
    }
    wr(t, 0x24, 0);
    wr(t, 0x20, features as u32);
    wr(t, 0x24, 1);
    wr(t, 0x20, (features >> 32) as u32);
    wr(t, 0x70, 0xb);
    wr(t, 0x38, 64);
    wr(t, 0x80, 0x1000);
    wr(t, 0x90, 0x2000);
    wr(t, 0xa0, 0x3000);
    wr(t, 0x44, 1);
    wr(t, 0x70, 0xf);
    assert!(d.device.lock().unwrap().is_activated());
}

fn memory() -> GuestMemoryMmap {
    create_guest_memory(1 << 20, HugePages::None).unwrap()
}

#[test]
fn a_device_set_round_trips_and_the_live_queues_are_kicked() {
    let dir = Images::new("rt");
    let (a, b) = (dir.image("a.img"), dir.image("b.img"));
    let mem = memory();
    let layout = [
        ("root", a.as_path(), slot(0)),
        ("data", b.as_path(), slot(1)),
    ];
    let src = Set::new(&mem, &layout);
    start_driver(&src.drives[0]);
    wr(&src.drives[1].mmio.transport, 0x70, 1);
    src.legacy
        .serial
        .lock()
        .unwrap()
        .enqueue_input(b"typed before the snapshot");
    src.legacy
        .i8042
        .lock()
        .unwrap()
        .trigger_ctrl_alt_del()
        .unwrap();

    let saved = src.devices().save_state();
    assert_eq!(saved.drives.len(), 2);
    assert!(saved.drives[0].device.virtio.activated);
    assert!(!saved.drives[1].device.virtio.activated);
    let json = serde_json::to_string(&saved).unwrap();
    let parsed: DeviceStates = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, saved);

    let dst = Set::new(&mem, &layout);
    dst.devices().restore_state(&parsed).unwrap();
    assert!(dst.drives[0].device.lock().unwrap().is_activated());
    assert!(!dst.drives[1].device.lock().unwrap().is_activated());
    assert_eq!(dst.devices().save_state(), saved);

    // One live queue (drive `root`); its notification EventFd is written.
    assert_eq!(dst.devices().kick_all_queues().unwrap(), 1);
    let t = dst.drives[0].mmio.transport.lock().unwrap();
    assert_eq!(t.queue_evts()[0].read().unwrap(), 1);
}

/// Restores `states` into `set` and checks the error names `needle` and nothing changed.
fn refused(set: &Set, states: &DeviceStates, needle: &str) {
    let before = set.devices().save_state();
    let err = set.devices().restore_state(states).unwrap_err().to_string();
    assert!(err.contains(needle), "`{err}` does not name `{needle}`");
    assert_eq!(
        set.devices().save_state(),
        before,
        "{needle}: state applied"
    );
    assert!(!set.drives[0].device.lock().unwrap().is_activated());
}

#[test]
fn a_layout_that_does_not_match_the_configuration_is_refused() {
    let dir = Images::new("layout");
    let (a, b) = (dir.image("a.img"), dir.image("b.img"));
    let mem = memory();
    let src = Set::new(&mem, &[("root", &a, slot(0)), ("data", &b, slot(1))]);
    start_driver(&src.drives[0]);
    let saved = src.devices().save_state();

    let one = Set::new(&mem, &[("root", &a, slot(0))]);
    refused(
        &one,
        &saved,
        "devices.drives: 2 saved, the configuration has 1",
    );
    let swapped = Set::new(&mem, &[("data", &b, slot(0)), ("root", &a, slot(1))]);
    refused(&swapped, &saved, "devices.drives[0].id: `root` saved");
    let moved = Set::new(&mem, &[("root", &a, slot(2)), ("data", &b, slot(1))]);
    refused(&moved, &saved, "devices.drives[root].slot");
}

#[test]
fn one_bad_field_anywhere_leaves_every_device_as_built() {
    let dir = Images::new("bad");
    let (a, b) = (dir.image("a.img"), dir.image("b.img"));
    let mem = memory();
    let layout = [
        ("root", a.as_path(), slot(0)),
        ("data", b.as_path(), slot(1)),
    ];
    let src = Set::new(&mem, &layout);
    start_driver(&src.drives[0]);
    start_driver(&src.drives[1]);
    let saved = src.devices().save_state();
    let dst = Set::new(&mem, &layout);

    // The last drive is bad: the first one must not have been re-activated either.
    let mut s = saved.clone();
    s.drives[1].transport.queues[0].used_ring = 0x3001;
    refused(&dst, &s, "devices.drives[data].transport.queues[0]");
    let mut s = saved.clone();
    s.drives[1].device.virtio.queues[0].size = 3;
    refused(&dst, &s, "devices.drives[data].device.queues[0].size");
    let mut s = saved.clone();
    s.drives[1].device.capacity = 1;
    refused(&dst, &s, "devices.drives[data].block.capacity");
    let mut s = saved.clone();
    s.serial.uart.in_buffer = vec![0; 65];
    refused(&dst, &s, "devices.serial.uart.in_buffer");
    let mut s = saved.clone();
    s.i8042.pending_cmd = Some(0x01);
    refused(&dst, &s, "devices.i8042.pending_cmd");
    // And the good state still applies afterwards.
    dst.devices().restore_state(&saved).unwrap();
    assert_eq!(dst.devices().save_state(), saved);
}

#[test]
fn every_one_byte_corruption_of_a_saved_set_is_refused_or_restored_exactly_never_a_panic() {
    let dir = Images::new("flip");
    let (a, b) = (dir.image("a.img"), dir.image("b.img"));
    let mem = memory();
    let layout = [
        ("root", a.as_path(), slot(0)),
        ("data", b.as_path(), slot(1)),
    ];
    let src = Set::new(&mem, &layout);
    start_driver(&src.drives[0]);
    src.legacy.serial.lock().unwrap().enqueue_input(b"abc");
    let bytes = postcard::to_stdvec(&src.devices().save_state()).unwrap();
    let (mut decoded, mut restored) = (0, 0);
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = bytes.clone();
            bad[i] ^= flip;
            let Ok(states) = postcard::from_bytes::<DeviceStates>(&bad) else {
                continue;
            };
            decoded += 1;
            let dst = Set::new(&mem, &layout);
            if dst.devices().restore_state(&states).is_ok() {
                restored += 1;
                // What was accepted is exactly what the devices now hold (a device that
                // needs a reset is restored stopped, so its `activated` reads back false).
                if states.drives.iter().all(|d| !d.transport.needs_reset) {
                    assert_eq!(dst.devices().save_state(), states, "byte {i} ^ {flip:#x}");
                }
            }
        }
    }
    // Most corruptions still decode (plain integers); far from all of them restore.
    assert!(decoded > bytes.len(), "{decoded} of {}", bytes.len() * 3);
    assert!(restored < decoded / 2, "{restored} of {decoded} restored");
}
