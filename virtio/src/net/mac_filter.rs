//! Anti-spoofing: which source MACs a guest may put on the wire.

/// Offset of the source address in an Ethernet header.
pub const ETH_SRC_OFFSET: usize = 6;

/// Whether a tx frame with source `src` may leave the guest. With a configured `guest_mac`
/// and spoofing not allowed, only that exact address passes.
pub fn source_allowed(src: &[u8; 6], guest_mac: Option<[u8; 6]>, allow_spoofing: bool) -> bool {
    match guest_mac {
        Some(mac) if !allow_spoofing => *src == mac,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_guest_mac_passes_unless_spoofing_is_allowed() {
        let mac = [6, 0, 0, 0, 0, 1];
        let other = [6, 0, 0, 0, 0, 2];
        assert!(source_allowed(&mac, Some(mac), false));
        assert!(!source_allowed(&other, Some(mac), false));
        assert!(source_allowed(&other, Some(mac), true));
        assert!(source_allowed(&other, None, false));
    }
}
