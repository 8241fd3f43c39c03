//! The MMDS side of the data path.
//!
//! tx: a frame whose first bytes show ARP for the MMDS address or IPv4 to it is copied out
//! of guest memory (after the source MAC check that applies to every guest frame) and given
//! to the endpoint; it never reaches the tap. Everything else takes the usual path.
//! rx: frames the endpoint produced are placed into the guest's rx buffers ahead of tap
//! frames, through the same gathering, rate limiting and publishing as tap frames.

use super::chain;
use super::device::Net;
use super::mac_filter::{self, ETH_SRC_OFFSET};
use super::metrics::NetMetrics;
use super::tx::TxOutcome;
use super::{Mem, VNET_HDR_LEN};

/// What the device needs of a metadata-service endpoint. The VMM wires the `mmds` crate's
/// (ARP and TCP for the MMDS address); the device knows nothing of HTTP or TCP.
pub trait FrameEndpoint: Send {
    /// Whether a guest frame (Ethernet, from the destination MAC) is for the endpoint, from
    /// its first [`ENDPOINT_HEAD_LEN`] bytes (fewer for a shorter frame).
    fn wants(&self, head: &[u8]) -> bool;
    /// Takes a frame `wants` accepted: the device's own copy of it.
    fn handle_frame(&mut self, frame: &[u8]);
    /// Whether frames for the guest are (or may become) ready.
    fn has_frames(&self) -> bool;
    /// The next Ethernet frame for the guest.
    fn next_frame(&mut self) -> Option<Vec<u8>>;
}

/// Bytes of a frame the device reads to ask [`FrameEndpoint::wants`]: an ARP packet's target
/// address ends there.
pub const ENDPOINT_HEAD_LEN: usize = 14 + 28;

impl Net {
    /// Takes the tx frame described by `self.segs` (`len` bytes with the virtio-net header)
    /// if it is for the MMDS. `None`: not for the MMDS, send it as usual.
    pub(super) fn mmds_tx(&mut self, mem: &Mem, len: usize) -> Option<TxOutcome> {
        let stack = self.mmds.as_mut()?;
        let frame_len = len.checked_sub(VNET_HDR_LEN)?;
        let mut head = [0u8; ENDPOINT_HEAD_LEN];
        let n = frame_len.min(head.len());
        if !chain::read_at(mem, &self.segs, VNET_HDR_LEN, &mut head[..n])
            || !stack.wants(&head[..n])
        {
            return None;
        }
        let mut src = [0u8; 6];
        src.copy_from_slice(&head[ETH_SRC_OFFSET..ETH_SRC_OFFSET + 6]);
        if !mac_filter::source_allowed(&src, self.guest_mac, self.allow_mac_spoofing) {
            // The usual path drops and counts it.
            return None;
        }
        // `len` was bounded by the chain parser (MAX_BUFFER_LEN).
        let mut frame = vec![0u8; frame_len];
        if !chain::read_at(mem, &self.segs, VNET_HDR_LEN, &mut frame) {
            NetMetrics::inc(&self.metrics.tx_malformed);
            return Some(TxOutcome::Dropped);
        }
        // The endpoint judges its own copy: a guest rewriting the frame meanwhile only
        // changes what the endpoint sees, never what reaches the tap.
        stack.handle_frame(&frame);
        Some(TxOutcome::Sent)
    }

    /// Whether the MMDS endpoint has frames for the guest.
    pub(super) fn mmds_pending(&self) -> bool {
        self.mmds.as_ref().is_some_and(|s| s.has_frames())
    }

    /// Writes the endpoint's next frame (if any) into the gathered rx buffers, header first.
    /// Returns its length with the header, or `None` when there is no frame.
    pub(super) fn mmds_rx(&mut self, mem: &Mem) -> Result<Option<usize>, String> {
        let Some(frame) = self.mmds.as_mut().and_then(|s| s.next_frame()) else {
            return Ok(None);
        };
        let n = VNET_HDR_LEN + frame.len();
        let offered: usize = self.rx_chains.iter().map(|c| c.len as usize).sum();
        if n > offered.min(self.rx_frame_capacity) {
            NetMetrics::inc(&self.metrics.rx_oversized_dropped);
            return Ok(Some(0));
        }
        // No offloads: the endpoint's checksums are complete. `num_buffers` is set when
        // the frame is placed.
        let hdr = [0u8; VNET_HDR_LEN];
        if !chain::write_at(mem, &self.segs, 0, &hdr)
            || !chain::write_at(mem, &self.segs, VNET_HDR_LEN, &frame)
        {
            return Err("cannot write an MMDS frame into a validated rx buffer".into());
        }
        Ok(Some(n))
    }
}
