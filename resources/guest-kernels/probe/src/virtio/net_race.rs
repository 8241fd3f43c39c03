//! `net-spoof-race:FRAMES`: the BSP sends FRAMES copies of one frame with the
//! interface's own MAC, every tx descriptor pointing at the same buffer, while
//! an AP keeps xor-ing the last byte of its source MAC with 0x5a. A device
//! that checks the MAC in guest memory and then sends from guest memory lets
//! some flipped frames out; the host side counts what reaches the tap.

use super::net::{Net, HDR_LEN};
use super::{dma, fields, VirtioError};
use crate::arch::cpu::rdtsc;
use crate::cmdline::parse_u64;
use crate::mptable::{self, MpTable};
use crate::timer::Deadline;
use crate::virtio::net_cmds::micros;
use crate::virtio::netstack::MacShow;
use crate::{smp, sprintln};

/// The ethertype the host test filters on (IEEE 802 local experimental 1).
const RACE_ETHERTYPE: u16 = 0x88b5;
/// First payload byte, so the host can tell these frames from others.
const RACE_MARKER: u8 = 0x52;
const FRAME_LEN: u64 = 60;
/// Frame byte xor-ed by the AP: the last byte of the source MAC.
const FLIP_OFFSET: u64 = 6 + 5;
const FLIP_MASK: u8 = 0x5a;
const DEFAULT_FRAMES: u64 = 100_000;

pub(super) fn spoof_race(
    net: &mut Net,
    index: usize,
    arg: Option<&[u8]>,
) -> Result<(), VirtioError> {
    let (f, n) = fields::<1>(arg);
    let frames = match n {
        0 => DEFAULT_FRAMES,
        1 => match parse_u64(f[0]) {
            Some(v) if v > 0 => v,
            _ => {
                sprintln!("PROBE net-spoof-race FAIL bad-argument want=FRAMES");
                return Ok(());
            }
        },
        _ => {
            sprintln!("PROBE net-spoof-race FAIL bad-argument want=FRAMES");
            return Ok(());
        }
    };
    let buf = net.tx_buf(0);
    let frame = buf + HDR_LEN;
    dma::write::<u64>(buf, 0);
    dma::write::<u32>(buf + 8, 0);
    for k in 0..6 {
        dma::write::<u8>(frame + k, 0xff);
        dma::write::<u8>(frame + 6 + k, net.mac[k as usize]);
    }
    dma::write::<u8>(frame + 12, (RACE_ETHERTYPE >> 8) as u8);
    dma::write::<u8>(frame + 13, RACE_ETHERTYPE as u8);
    dma::write::<u8>(frame + 14, RACE_MARKER);
    for k in 15..FRAME_LEN {
        dma::write::<u8>(frame + k, k as u8);
    }
    net.alias_tx(buf, (HDR_LEN + FRAME_LEN) as u32);

    let table = mptable::parse().unwrap_or_else(|_| MpTable::first_n(2));
    smp::set_flipper(frame + FLIP_OFFSET, FLIP_MASK);
    let woken = match smp::start_aps(&table) {
        Ok(r) => r.online.saturating_sub(1),
        Err(_) => 0,
    };
    let deadline = Deadline::after_us(2_000_000);
    while smp::probe_ap_flips.load(core::sync::atomic::Ordering::Acquire) == 0 {
        if deadline.passed() {
            smp::stop_flipper();
            sprintln!(
                "PROBE net-spoof-race FAIL no-flipping-ap dev={} aps={}",
                index,
                woken
            );
            return Ok(());
        }
        core::hint::spin_loop();
    }

    let start = rdtsc();
    let mut pushed = 0u64;
    // Generous: the guest side is emulated instruction by instruction under PVM.
    let deadline = Deadline::after_us(120_000_000);
    let result = loop {
        if pushed == frames {
            if net.tx_idle() {
                break Ok(());
            }
        } else {
            let n = net.push_free_tx(frames - pushed);
            if n > 0 {
                pushed += n;
                net.kick_tx();
                continue;
            }
        }
        if net.t.needs_reset() {
            break Err(VirtioError::NeedsReset);
        }
        if deadline.passed() {
            break Err(VirtioError::Timeout);
        }
    };
    let cycles = rdtsc().wrapping_sub(start);
    let (flips, stopped) = smp::stop_flipper();
    result?;
    sprintln!(
        "PROBE net-spoof-race ok dev={} frames={} mac={} flips={} aps={} stopped={} us={}",
        index,
        frames,
        MacShow(net.mac),
        flips,
        woken,
        stopped,
        micros(cycles)
    );
    Ok(())
}
