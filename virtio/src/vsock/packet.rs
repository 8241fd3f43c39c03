//! The 44-byte little-endian vsock packet header and the checks every packet from the guest
//! passes before the device acts on it.

/// Size of the header on the wire.
pub const HEADER_LEN: usize = 44;
/// Largest payload one packet may carry (Firecracker's limit; Linux sends at most 64 KiB).
pub const MAX_PAYLOAD: u32 = 64 << 10;
/// The host's CID as the guest addresses it.
pub const HOST_CID: u64 = 2;
/// `type`: stream sockets, the only kind served.
pub const TYPE_STREAM: u16 = 1;

/// `op` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
}

impl Op {
    fn from_u16(v: u16) -> Option<Op> {
        Some(match v {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

/// Why a packet from the guest is refused (the device answers RST where it can, and counts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("header of {0} bytes, need {HEADER_LEN}")]
    Short(usize),
    #[error("src_cid {got} is not the guest's CID {expected}")]
    WrongSrcCid { got: u64, expected: u64 },
    #[error("dst_cid {0} is not the host ({HOST_CID})")]
    WrongDstCid(u64),
    #[error("type {0} is not a stream")]
    NotStream(u16),
    #[error("unknown op {0}")]
    UnknownOp(u16),
    #[error("len {0} is over the {MAX_PAYLOAD}-byte payload limit")]
    TooLong(u32),
    #[error("op {op:?} carries {len} payload bytes; only RW may")]
    PayloadOnControl { op: Op, len: u32 },
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl Header {
    /// Decodes the first [`HEADER_LEN`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Header, PacketError> {
        if bytes.len() < HEADER_LEN {
            return Err(PacketError::Short(bytes.len()));
        }
        Ok(Header {
            src_cid: u64_at(bytes, 0),
            dst_cid: u64_at(bytes, 8),
            src_port: u32_at(bytes, 16),
            dst_port: u32_at(bytes, 20),
            len: u32_at(bytes, 24),
            type_: u16_at(bytes, 28),
            op: u16_at(bytes, 30),
            flags: u32_at(bytes, 32),
            buf_alloc: u32_at(bytes, 36),
            fwd_cnt: u32_at(bytes, 40),
        })
    }

    /// The wire form.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Checks a header the guest sent (tx queue) from `guest_cid`; returns its op.
    pub fn validate_from_guest(&self, guest_cid: u64) -> Result<Op, PacketError> {
        if self.src_cid != guest_cid {
            return Err(PacketError::WrongSrcCid {
                got: self.src_cid,
                expected: guest_cid,
            });
        }
        if self.dst_cid != HOST_CID {
            return Err(PacketError::WrongDstCid(self.dst_cid));
        }
        if self.type_ != TYPE_STREAM {
            return Err(PacketError::NotStream(self.type_));
        }
        let op = Op::from_u16(self.op).ok_or(PacketError::UnknownOp(self.op))?;
        if self.len > MAX_PAYLOAD {
            return Err(PacketError::TooLong(self.len));
        }
        if op != Op::Rw && self.len != 0 {
            return Err(PacketError::PayloadOnControl { op, len: self.len });
        }
        Ok(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1024,
            dst_port: 10789,
            len,
            type_: TYPE_STREAM,
            op: Op::Rw as u16,
            flags: 0,
            buf_alloc: 256 << 10,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn encodes_and_decodes_the_44_byte_little_endian_layout() {
        let h = rw(100);
        let b = h.encode();
        assert_eq!(b.len(), 44);
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[20..24], &10789u32.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
        assert_eq!(Header::decode(&b), Ok(h));
        assert_eq!(Header::decode(&b[..43]), Err(PacketError::Short(43)));
    }

    #[test]
    fn guest_packets_are_checked_field_by_field() {
        assert_eq!(rw(100).validate_from_guest(3), Ok(Op::Rw));
        assert!(matches!(
            rw(1).validate_from_guest(4),
            Err(PacketError::WrongSrcCid {
                got: 3,
                expected: 4
            })
        ));
        let mut h = rw(0);
        h.dst_cid = 1;
        assert_eq!(h.validate_from_guest(3), Err(PacketError::WrongDstCid(1)));
        h = rw(0);
        h.type_ = 2;
        assert_eq!(h.validate_from_guest(3), Err(PacketError::NotStream(2)));
        h = rw(0);
        h.op = 99;
        assert_eq!(h.validate_from_guest(3), Err(PacketError::UnknownOp(99)));
        assert_eq!(
            rw(MAX_PAYLOAD + 1).validate_from_guest(3),
            Err(PacketError::TooLong(MAX_PAYLOAD + 1))
        );
        h = rw(8);
        h.op = Op::Request as u16;
        assert!(matches!(
            h.validate_from_guest(3),
            Err(PacketError::PayloadOnControl {
                op: Op::Request,
                len: 8
            })
        ));
    }
}
