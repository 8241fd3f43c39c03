//! virtio over virtio-mmio (modern, version 2 only): discovery from the
//! command line, split virtqueues in probe memory, and the virtio-blk /
//! virtio-net drivers behind the `blk-*` and `net-*` commands.
//!
//! Completion is by polling the used ring (interrupts stay masked: IF=0 all
//! the time); the driver sets VRING_AVAIL_F_NO_INTERRUPT and honours the
//! device's VRING_USED_F_NO_NOTIFY.
//!
//! - `mmio.rs`: discovery, registers, init sequence, feature negotiation.
//! - `queue.rs`: split virtqueue; `dma.rs`: the memory devices touch.
//! - `blk.rs`: virtio-blk driver; `blk_cmds.rs`: its commands and the data
//!   pattern; `bench.rs`: `blk-bench`; `hostile.rs`: `blk-hostile`.
//! - `net.rs`: virtio-net driver; `netstack.rs`: Ethernet/ARP/IPv4/ICMP/UDP
//!   frames by hand; `net_cmds.rs`: its commands.
//! - `rng.rs`: virtio-rng driver and the `rng-*` commands.
//! - `balloon.rs`: virtio-balloon driver and the `balloon-*` commands.
//! - `vsock.rs`: virtio-vsock driver; `vsock_cmds.rs`: the `vsock-*` commands (stream
//!   connections by hand, credit both ways); `vsock_hostile.rs`: `vsock-hostile`.

pub mod balloon;
pub mod bench;
pub mod blk;
pub mod blk_cmds;
pub mod dma;
pub mod hostile;
pub mod mmds_cmds;
pub mod mmio;
pub mod net;
pub mod net_cmds;
pub mod net_hostile;
pub mod net_race;
pub mod net_traffic;
pub mod netstack;
pub mod queue;
pub mod rng;
pub mod tcp;
pub mod vsock;
pub mod vsock_cmds;
pub mod vsock_hostile;

use crate::bootinfo;
use crate::cmdline::{as_text, parse_u64, Command};
use crate::sync::BootCell;
use mmio::{MmioDevice, MAX_DEVICES};

/// Why a virtio operation did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioError {
    NoDevice,
    LegacyTransport,
    ResetTimeout,
    NoVersion1,
    FeaturesRefused,
    QueueAlreadyReady,
    QueueRefused,
    QueueMaxZero,
    DriverOkRefused,
    NeedsReset,
    Timeout,
    NoMemory,
    WrongUsedId,
}

impl VirtioError {
    pub fn reason(self) -> &'static str {
        match self {
            VirtioError::NoDevice => "no-such-device",
            VirtioError::LegacyTransport => "legacy-transport-unsupported",
            VirtioError::ResetTimeout => "reset-timeout",
            VirtioError::NoVersion1 => "version-1-not-offered",
            VirtioError::FeaturesRefused => "features-ok-refused",
            VirtioError::QueueAlreadyReady => "queue-already-ready",
            VirtioError::QueueRefused => "queue-ready-refused",
            VirtioError::QueueMaxZero => "queue-max-zero",
            VirtioError::DriverOkRefused => "driver-ok-refused",
            VirtioError::NeedsReset => "device-needs-reset",
            VirtioError::Timeout => "timeout",
            VirtioError::NoMemory => "no-dma-memory",
            VirtioError::WrongUsedId => "wrong-used-id",
        }
    }
}

struct Devices {
    scanned: bool,
    list: [MmioDevice; MAX_DEVICES],
    len: usize,
}

const NO_DEVICE: MmioDevice = MmioDevice {
    base: 0,
    size: 0,
    irq: 0,
    version: 0,
    device_id: 0,
};

static DEVICES: BootCell<Devices> = BootCell::new(Devices {
    scanned: false,
    list: [NO_DEVICE; MAX_DEVICES],
    len: 0,
});

/// The `index`-th device (by MMIO address) with virtio device id `id`.
pub fn find(id: u32, index: usize) -> Option<MmioDevice> {
    DEVICES.with(|d| {
        if !d.scanned {
            let boot = bootinfo::get();
            d.len = mmio::discover(&boot.cmdline[..boot.cmdline_len], &mut d.list);
            d.scanned = true;
        }
        d.list[..d.len]
            .iter()
            .filter(|m| m.device_id == id)
            .nth(index)
            .copied()
    })
}

/// Splits `name@N` into (name, N); N defaults to 0.
fn split_index(name: &[u8]) -> Option<(&[u8], usize)> {
    match name.iter().position(|&b| b == b'@') {
        Some(at) => Some((&name[..at], parse_u64(&name[at + 1..])? as usize)),
        None => Some((name, 0)),
    }
}

/// Runs a `blk-*` / `net-*` command; false when `cmd` is not one of ours.
pub fn run(cmd: Command<'_>) -> bool {
    if !(cmd.name.starts_with(b"blk-")
        || cmd.name.starts_with(b"net-")
        || cmd.name.starts_with(b"rng-")
        || cmd.name.starts_with(b"balloon-")
        || cmd.name.starts_with(b"vsock-"))
    {
        return false;
    }
    let Some((name, index)) = split_index(cmd.name) else {
        crate::sprintln!("PROBE {} FAIL bad-device-index", as_text(cmd.name));
        return true;
    };
    dma::reset();
    if name.starts_with(b"blk-") {
        blk_cmds::run(as_text(name), index, cmd.arg);
    } else if name.starts_with(b"balloon-") {
        balloon::run(as_text(name), index, cmd.arg);
    } else if name.starts_with(b"vsock-") {
        vsock_cmds::run(as_text(name), index, cmd.arg);
    } else if name.starts_with(b"rng-") {
        rng::run(as_text(name), index, cmd.arg);
    } else {
        net_cmds::run(as_text(name), index, cmd.arg);
    }
    true
}

/// Splits a `:`-separated argument into at most N fields.
pub fn fields<const N: usize>(arg: Option<&[u8]>) -> ([&[u8]; N], usize) {
    let mut out: [&[u8]; N] = [&[]; N];
    let mut n = 0;
    if let Some(a) = arg {
        for f in a.split(|&b| b == b':') {
            if n == N {
                return (out, N + 1);
            }
            out[n] = f;
            n += 1;
        }
    }
    (out, n)
}
