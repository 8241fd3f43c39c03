//! Parsing and validation of virtio-blk requests (virtio 1.2, section 5.2.6).
//!
//! A request is a descriptor chain: a 16-byte device-readable header, data buffers, then a
//! device-writable status byte. Every shape the guest can get wrong is checked here; the
//! result is either a [`Request`] whose every buffer lies in guest memory with the right
//! direction, or a [`RequestError`] that says whether a status byte can still be reported.

use std::ops::Deref;

use virtio_bindings::bindings::virtio_blk::*;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use crate::GuestMemoryMmap;

pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
/// Bytes in a `GET_ID` answer.
pub const DEVICE_ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Size of one discard / write-zeroes segment.
pub const SEGMENT_LEN: u32 = 16;
/// Segments accepted per discard / write-zeroes request (advertised as max_*_seg).
pub const MAX_SEGMENTS: u32 = 1;

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct RequestHeader {
    request_type: u32,
    _reserved: u32,
    sector: u64,
}
// SAFETY: plain old data, every bit pattern is valid and there is no padding (4 + 4 + 8).
unsafe impl ByteValued for RequestHeader {}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct DiscardSegment {
    sector: u64,
    num_sectors: u32,
    flags: u32,
}
// SAFETY: plain old data, every bit pattern is valid and there is no padding (8 + 4 + 4).
unsafe impl ByteValued for DiscardSegment {}

/// What the driver asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    /// `unmap`: the device may deallocate the range instead of writing zeroes.
    WriteZeroes {
        unmap: bool,
    },
}

impl RequestKind {
    /// Whether the request modifies the disk (refused on a read-only drive).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            RequestKind::Out | RequestKind::Discard | RequestKind::WriteZeroes { .. }
        )
    }
}

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    /// First sector (IN/OUT/DISCARD/WRITE_ZEROES).
    pub sector: u64,
    /// Data buffers, each inside guest memory, device-writable for IN/GET_ID and
    /// device-readable otherwise.
    pub data: Vec<(GuestAddress, u32)>,
    /// Sum of the data lengths (for DISCARD/WRITE_ZEROES: the byte length of the range).
    pub data_len: u64,
    pub status_addr: GuestAddress,
}

impl Request {
    /// Byte offset on the disk.
    pub fn offset(&self) -> u64 {
        self.sector << SECTOR_SHIFT
    }
}

/// What is wrong with a request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestErrorKind {
    #[error("descriptor chain is empty or unreadable")]
    EmptyChain,
    #[error("descriptor chain loops, is longer than the queue or points outside the table")]
    BrokenChain,
    #[error("header descriptor is device-writable")]
    HeaderWriteOnly,
    #[error("header descriptor is {0} bytes, need 16")]
    HeaderTooShort(u32),
    #[error("buffer {addr:#x}+{len:#x} is not inside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("status descriptor missing, read-only or empty")]
    BadStatus,
    #[error("unsupported request type {0}")]
    UnsupportedType(u32),
    #[error("data buffer at {0:#x} has the wrong direction")]
    WrongDirection(u64),
    #[error("request has no data")]
    NoData,
    #[error("data length {0} is not a multiple of 512")]
    UnalignedLength(u64),
    #[error("sectors [{sector}, +{sectors}) are beyond the disk end {capacity}")]
    OutOfRange {
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
    #[error("segment list of {0} bytes is not 1 to {MAX_SEGMENTS} segments of 16 bytes")]
    BadSegments(u64),
    #[error("flags {0:#x} not supported for this request")]
    BadFlags(u32),
}

/// A request that cannot be executed; `status_addr` is where to report it, if anywhere.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{kind}")]
pub struct RequestError {
    pub kind: RequestErrorKind,
    pub status_addr: Option<GuestAddress>,
}

impl RequestError {
    /// The status byte to report.
    pub fn status(&self) -> u8 {
        match self.kind {
            RequestErrorKind::UnsupportedType(_) | RequestErrorKind::BadFlags(_) => {
                VIRTIO_BLK_S_UNSUPP as u8
            }
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

fn in_memory(mem: &GuestMemoryMmap, d: &Descriptor) -> bool {
    // An empty buffer is harmless but is never a valid data or header buffer either.
    d.len() > 0 && GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize)
}

/// Parses and validates the chain. `capacity` is the disk size in sectors.
pub fn parse<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    capacity: u64,
) -> Result<Request, RequestError>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    // The iterator stops silently on a loop, an over-long chain, an index outside the table or
    // an unreadable descriptor: a last descriptor still flagged NEXT reveals all of those.
    let descs: Vec<Descriptor> = chain.collect();
    let err = |kind, status_addr| RequestError { kind, status_addr };
    let Some(last) = descs.last() else {
        return Err(err(RequestErrorKind::EmptyChain, None));
    };
    if last.has_next() {
        return Err(err(RequestErrorKind::BrokenChain, None));
    }
    let status_ok = descs.len() >= 2 && last.is_write_only() && in_memory(mem, last);
    let status_addr = status_ok.then(|| last.addr());
    if !status_ok {
        return Err(err(RequestErrorKind::BadStatus, None));
    }
    let fail = |kind| err(kind, status_addr);

    let header_desc = &descs[0];
    if header_desc.is_write_only() {
        return Err(fail(RequestErrorKind::HeaderWriteOnly));
    }
    if header_desc.len() < 16 {
        return Err(fail(RequestErrorKind::HeaderTooShort(header_desc.len())));
    }
    let header: RequestHeader = mem.read_obj(header_desc.addr()).map_err(|_| {
        fail(RequestErrorKind::OutsideMemory {
            addr: header_desc.addr().0,
            len: header_desc.len(),
        })
    })?;
    let data_descs = &descs[1..descs.len() - 1];

    let (kind, device_writes) = match header.request_type {
        VIRTIO_BLK_T_IN => (RequestKind::In, true),
        VIRTIO_BLK_T_OUT => (RequestKind::Out, false),
        VIRTIO_BLK_T_FLUSH => (RequestKind::Flush, false),
        VIRTIO_BLK_T_GET_ID => (RequestKind::GetId, true),
        VIRTIO_BLK_T_DISCARD => (RequestKind::Discard, false),
        VIRTIO_BLK_T_WRITE_ZEROES => (RequestKind::WriteZeroes { unmap: false }, false),
        t => return Err(fail(RequestErrorKind::UnsupportedType(t))),
    };

    let mut data = Vec::with_capacity(data_descs.len());
    let mut data_len: u64 = 0;
    for d in data_descs {
        if kind == RequestKind::Flush {
            // A flush carries no data; tolerate (and ignore) stray buffers.
            break;
        }
        if d.is_write_only() != device_writes {
            return Err(fail(RequestErrorKind::WrongDirection(d.addr().0)));
        }
        if !in_memory(mem, d) {
            return Err(fail(RequestErrorKind::OutsideMemory {
                addr: d.addr().0,
                len: d.len(),
            }));
        }
        data.push((d.addr(), d.len()));
        // The chain iterator caps the total at u32::MAX, so this cannot overflow.
        data_len += u64::from(d.len());
    }

    let mut req = Request {
        kind,
        sector: header.sector,
        data,
        data_len,
        status_addr: last.addr(),
    };
    match kind {
        RequestKind::In | RequestKind::Out => {
            if req.data_len == 0 {
                return Err(fail(RequestErrorKind::NoData));
            }
            if !req.data_len.is_multiple_of(SECTOR_SIZE) {
                return Err(fail(RequestErrorKind::UnalignedLength(req.data_len)));
            }
            check_range(header.sector, req.data_len >> SECTOR_SHIFT, capacity).map_err(&fail)?;
        }
        RequestKind::GetId => {
            if req.data_len == 0 {
                return Err(fail(RequestErrorKind::NoData));
            }
        }
        RequestKind::Flush => {}
        RequestKind::Discard | RequestKind::WriteZeroes { .. } => {
            if req.data_len == 0
                || !req.data_len.is_multiple_of(u64::from(SEGMENT_LEN))
                || req.data_len > u64::from(SEGMENT_LEN * MAX_SEGMENTS)
                || req.data[0].1 < SEGMENT_LEN
            {
                return Err(fail(RequestErrorKind::BadSegments(req.data_len)));
            }
            let seg: DiscardSegment = mem.read_obj(req.data[0].0).map_err(|_| {
                fail(RequestErrorKind::OutsideMemory {
                    addr: req.data[0].0 .0,
                    len: SEGMENT_LEN,
                })
            })?;
            let unmap = seg.flags & 1 != 0;
            // Bit 0 (unmap) only means something for write-zeroes; other bits are reserved.
            if seg.flags & !1 != 0 || (kind == RequestKind::Discard && unmap) {
                return Err(fail(RequestErrorKind::BadFlags(seg.flags)));
            }
            check_range(seg.sector, u64::from(seg.num_sectors), capacity).map_err(&fail)?;
            if let RequestKind::WriteZeroes { .. } = kind {
                req.kind = RequestKind::WriteZeroes { unmap };
            }
            req.sector = seg.sector;
            req.data_len = u64::from(seg.num_sectors) << SECTOR_SHIFT;
        }
    }
    Ok(req)
}

fn check_range(sector: u64, sectors: u64, capacity: u64) -> Result<(), RequestErrorKind> {
    match sector.checked_add(sectors) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(RequestErrorKind::OutOfRange {
            sector,
            sectors,
            capacity,
        }),
    }
}
