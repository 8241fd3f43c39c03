//! The virtio-mmio transport as a hostile driver sees it: arbitrary register and
//! config-space reads and writes (any offset, any size), in any order, against
//! `virtio::MmioTransport` wrapping a real virtio-blk device (Sync engine) whose queue
//! the driver sets up in mock guest memory. This covers the status state machine, feature
//! negotiation, queue register validation and construction at `QueueReady` and
//! `DRIVER_OK`, activation, notifications and reset of an active device.
//!
//! Input layout (little endian): `len: u16`, then `len` bytes of guest memory in the
//! [`Scenario`](crate::guest::Scenario) layout (only its memory writes matter here), then
//! MMIO accesses of 7 bytes each: `kind: u8` (bit 0: write; bits 1-2: size 4, 1, 2 or 8
//! bytes), `offset: u16` (within the 4 KiB window), `value: u32`. The device's `io` loop
//! runs after every write, as the `io` thread would; at the end the driver resets the
//! device, which must leave it inactive.

use std::sync::{Mutex, OnceLock};

use devices::BusDevice;
use virtio::block::{Block, BlockConfig, CacheType, IoEngine};
use virtio::{MmioTransport, VirtioDevice, MMIO_WINDOW_SIZE};
use vmm_sys_util::tempfile::TempFile;

use crate::device::DeviceLoop;
use crate::guest::{Scenario, ScenarioBuilder, AVAIL_RING, DATA, DESC_TABLE, USED_RING};
use crate::input::Input;

const SIZES: [usize; 4] = [4, 1, 2, 8];

fn device() -> &'static Mutex<DeviceLoop<Block>> {
    static DEVICE: OnceLock<Mutex<DeviceLoop<Block>>> = OnceLock::new();
    DEVICE.get_or_init(|| {
        let file = match TempFile::new_with_prefix(crate::scratch_dir().join("xenia-fuzz-mmio")) {
            Ok(f) => f,
            Err(e) => panic!("cannot create a disk image: {e}"),
        };
        if let Err(e) = file.as_file().set_len(64 * 512) {
            panic!("cannot size the disk image: {e}");
        }
        let cfg = BlockConfig {
            drive_id: "mmio".into(),
            path_on_host: file.as_path().to_path_buf(),
            is_read_only: false,
            cache_type: CacheType::Writeback,
            io_engine: IoEngine::Sync,
            image_format: virtio::block::ImageFormat::Raw,
            rate_limiter: None,
        };
        match Block::new(&cfg) {
            Ok(dev) => Mutex::new(DeviceLoop::new(dev)),
            Err(e) => panic!("cannot open the disk image: {e}"),
        }
    })
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mem_len = usize::from(input.u16());
    let mem = Scenario::parse(input.bytes(mem_len)).memory();
    let mut dev_loop = crate::guest::lock_recovering(device());
    let mut transport = match MmioTransport::new(mem, dev_loop.shared()) {
        Ok(t) => t,
        Err(e) => panic!("cannot create the transport: {e}"),
    };
    while !input.is_empty() {
        let kind = input.u8();
        let offset = u64::from(input.u16()) % MMIO_WINDOW_SIZE;
        let value = u64::from(input.u32());
        let size = SIZES[usize::from(kind >> 1) & 3];
        let bytes = value.to_le_bytes();
        if kind & 1 != 0 {
            transport.write(offset, &bytes[..size]);
            dev_loop.run_until_quiet();
        } else {
            let mut buf = [0u8; 8];
            transport.read(offset, &mut buf[..size]);
        }
    }
    transport.write(0x70, &0u32.to_le_bytes());
    dev_loop.run_until_quiet();
    assert!(
        !dev_loop.device().is_activated(),
        "the device is still active after the driver reset it"
    );
}

/// Builds inputs: guest memory, then register accesses.
#[derive(Debug, Default)]
struct Ops(Vec<u8>);

impl Ops {
    fn write(&mut self, offset: u16, value: u32) -> &mut Self {
        self.access(1, offset, value)
    }

    fn read(&mut self, offset: u16) -> &mut Self {
        self.access(0, offset, 0)
    }

    fn access(&mut self, kind: u8, offset: u16, value: u32) -> &mut Self {
        self.0.push(kind);
        self.0.extend_from_slice(&offset.to_le_bytes());
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// The Linux driver's bring-up of queue 0 with `size` entries, up to DRIVER_OK.
    fn bring_up(&mut self, features_lo: u32, size: u32) -> &mut Self {
        self.read(0x00)
            .read(0x04)
            .read(0x08)
            .write(0x70, 0)
            .write(0x70, 1);
        self.write(0x70, 3)
            .write(0x14, 0)
            .read(0x10)
            .write(0x14, 1)
            .read(0x10);
        self.write(0x24, 0).write(0x20, features_lo);
        self.write(0x24, 1).write(0x20, 1); // VIRTIO_F_VERSION_1
        self.write(0x70, 11).read(0x70);
        self.write(0x30, 0).read(0x44).read(0x34).write(0x38, size);
        self.write(0x80, DESC_TABLE as u32).write(0x84, 0);
        self.write(0x90, AVAIL_RING as u32).write(0x94, 0);
        self.write(0xa0, USED_RING as u32).write(0xa4, 0);
        self.write(0x44, 1).write(0x70, 15)
    }

    fn build(&self, memory: &[u8]) -> Vec<u8> {
        let mut out = (memory.len() as u16).to_le_bytes().to_vec();
        out.extend_from_slice(memory);
        out.extend_from_slice(&self.0);
        out
    }
}

/// Seeds: a full bring-up serving a read, the config space read at every size, a reset of
/// an active device and a re-initialisation, EVENT_IDX and FLUSH negotiated.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut memory = ScenarioBuilder::new(4, 0);
    let mut header = 0u32.to_le_bytes().to_vec(); // VIRTIO_BLK_T_IN
    header.extend_from_slice(&[0; 4]);
    header.extend_from_slice(&1u64.to_le_bytes());
    memory.write(DATA, &header).chain(&[
        (DATA, 16, false),
        (DATA + 0x200, 512, true),
        (DATA + 0x1000, 1, true),
    ]);
    let memory = memory.build();

    let mut read = Ops::default();
    read.bring_up(1 << 9, 16)
        .write(0x50, 0)
        .read(0x60)
        .write(0x64, 1);
    let mut config = Ops::default();
    config.bring_up(0, 16);
    for (size, kind) in [(4, 0u8), (1, 2), (2, 4), (8, 6)] {
        for offset in (0x100..0x140).step_by(size) {
            config.access(kind, offset, 0);
        }
    }
    let mut reset = Ops::default();
    reset
        .bring_up(1 << 9, 16)
        .write(0x50, 0)
        .write(0x70, 0)
        .bring_up((1 << 9) | (1 << 29), 8)
        .write(0x50, 0)
        .read(0xfc);
    let mut bad = Ops::default();
    // A queue size that is not a power of two, rings outside memory, an unoffered feature.
    bad.bring_up(1 << 9, 12)
        .write(0x70, 0)
        .write(0x70, 1)
        .write(0x70, 3)
        .write(0x24, 0)
        .write(0x20, 1 << 31)
        .write(0x70, 11)
        .read(0x70);
    vec![
        ("read", read.build(&memory)),
        ("config-space", config.build(&memory)),
        ("reset-and-again", reset.build(&memory)),
        ("bad-setup", bad.build(&memory)),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The bring-up seed really activates the device and serves the read.
    #[test]
    fn the_read_seed_reaches_the_disk() {
        let before = device()
            .lock()
            .unwrap()
            .device()
            .metrics()
            .snapshot()
            .read_count;
        let (_, input) = seeds().into_iter().next().unwrap();
        run(&input);
        let after = device()
            .lock()
            .unwrap()
            .device()
            .metrics()
            .snapshot()
            .read_count;
        assert_eq!(after, before + 1);
    }
}
