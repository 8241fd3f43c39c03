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
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use crate::GuestMemoryMmap;

pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
/// Bytes in a `GET_ID` answer.
pub const DEVICE_ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Size of one discard / write-zeroes segment.
pub const SEGMENT_LEN: u32 = 16;
/// Segments accepted per discard / write-zeroes request (advertised as max_*_seg).
pub const MAX_SEGMENTS: u32 = 1;
/// Data buffers accepted per request, advertised as `seg_max`: a full 256-entry queue
/// minus the header and status descriptors.
pub const SEG_MAX: u32 = 254;
/// Largest range one discard / write-zeroes segment may cover, in sectors; advertised as
/// `max_discard_sectors` and `max_write_zeroes_sectors` (the byte length fits a u32).
pub const MAX_DISCARD_SECTORS: u32 = u32::MAX >> SECTOR_SHIFT;

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

/// A validated request. `data` holds at most [`SEG_MAX`] buffers.
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
    #[error("more than {SEG_MAX} data buffers (seg_max)")]
    TooManySegments,
    #[error("{0} sectors in one segment, more than max_discard_sectors {MAX_DISCARD_SECTORS}")]
    TooManySectors(u32),
    #[error("indirect descriptor, but VIRTIO_RING_F_INDIRECT_DESC was not negotiated")]
    Indirect,
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
///
/// The chain is walked once, without collecting it: at most [`SEG_MAX`] data buffers are
/// kept (more is an error), whatever the guest put in the descriptor table. The status byte
/// is the last byte of the last descriptor (virtio 1.2, 5.2.6: framing is free), so a
/// driver may give it a longer buffer.
pub fn parse<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    capacity: u64,
) -> Result<Request, RequestError>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    parse_reusing(chain, mem, capacity, &mut Vec::new())
}

/// [`parse`] collecting the data buffers in `spare`'s allocation: a valid request takes it
/// (give it back through `Request::data` when done), a refused one leaves it in `spare`. With
/// `spare` holding [`SEG_MAX`] entries of capacity, parsing never allocates.
pub fn parse_reusing<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    capacity: u64,
    spare: &mut Vec<(GuestAddress, u32)>,
) -> Result<Request, RequestError>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    spare.clear();
    let data = spare;
    let err = |kind, status_addr| RequestError { kind, status_addr };
    let mut chain = chain;
    let Some(header_desc) = chain.next() else {
        return Err(err(RequestErrorKind::EmptyChain, None));
    };
    // Problems found before the status descriptor is known are reported through it.
    let mut first_err: Option<RequestErrorKind> = None;
    let note = |e: RequestErrorKind, first: &mut Option<RequestErrorKind>| {
        if first.is_none() {
            *first = Some(e);
        }
    };
    let header: Option<RequestHeader> = if header_desc.is_write_only() {
        note(RequestErrorKind::HeaderWriteOnly, &mut first_err);
        None
    } else if header_desc.len() < 16 {
        note(
            RequestErrorKind::HeaderTooShort(header_desc.len()),
            &mut first_err,
        );
        None
    } else {
        match mem.read_obj(header_desc.addr()) {
            Ok(h) => Some(h),
            Err(_) => {
                note(
                    RequestErrorKind::OutsideMemory {
                        addr: header_desc.addr().0,
                        len: header_desc.len(),
                    },
                    &mut first_err,
                );
                None
            }
        }
    };
    let kind = match header.map(|h| h.request_type) {
        None => None,
        Some(VIRTIO_BLK_T_IN) => Some((RequestKind::In, true)),
        Some(VIRTIO_BLK_T_OUT) => Some((RequestKind::Out, false)),
        Some(VIRTIO_BLK_T_FLUSH) => Some((RequestKind::Flush, false)),
        Some(VIRTIO_BLK_T_GET_ID) => Some((RequestKind::GetId, true)),
        Some(VIRTIO_BLK_T_DISCARD) => Some((RequestKind::Discard, false)),
        Some(VIRTIO_BLK_T_WRITE_ZEROES) => Some((RequestKind::WriteZeroes { unmap: false }, false)),
        Some(t) => {
            note(RequestErrorKind::UnsupportedType(t), &mut first_err);
            None
        }
    };

    let mut data_len: u64 = 0;
    // The descriptor seen last: the status one if nothing follows it, else a data buffer.
    let mut last: Option<Descriptor> = None;
    let mut segments: u32 = 0;
    for d in chain {
        let Some(prev) = last.replace(d) else {
            continue;
        };
        let Some((kind, device_writes)) = kind else {
            continue;
        };
        if kind == RequestKind::Flush {
            // A flush carries no data; tolerate (and ignore) stray buffers.
            continue;
        }
        segments += 1;
        if segments > SEG_MAX {
            note(RequestErrorKind::TooManySegments, &mut first_err);
            continue;
        }
        if prev.is_write_only() != device_writes {
            note(
                RequestErrorKind::WrongDirection(prev.addr().0),
                &mut first_err,
            );
            continue;
        }
        if !in_memory(mem, &prev) {
            note(
                RequestErrorKind::OutsideMemory {
                    addr: prev.addr().0,
                    len: prev.len(),
                },
                &mut first_err,
            );
            continue;
        }
        if first_err.is_none() {
            data.push((prev.addr(), prev.len()));
            // The chain iterator caps the total at u32::MAX, so this cannot overflow.
            data_len += u64::from(prev.len());
        }
    }
    // The iterator stops silently on a loop, an over-long chain, an index outside the table or
    // an unreadable descriptor: a last descriptor still flagged NEXT reveals all of those.
    let last = match last {
        Some(d) if d.has_next() => return Err(err(RequestErrorKind::BrokenChain, None)),
        None if header_desc.has_next() => return Err(err(RequestErrorKind::BrokenChain, None)),
        Some(d) => d,
        None => return Err(err(RequestErrorKind::BadStatus, None)),
    };
    if !(last.is_write_only() && in_memory(mem, &last)) {
        return Err(err(RequestErrorKind::BadStatus, None));
    }
    // In memory and non-empty, so the last byte is addressable.
    let status_addr = last.addr().unchecked_add(u64::from(last.len()) - 1);
    let fail = |kind| err(kind, Some(status_addr));
    if let Some(e) = first_err {
        return Err(fail(e));
    }
    let (Some(header), Some((kind, _))) = (header, kind) else {
        // Every path to a missing header or kind noted an error above.
        return Err(fail(RequestErrorKind::EmptyChain));
    };

    let mut req = Request {
        kind,
        sector: header.sector,
        data: std::mem::take(data),
        data_len,
        status_addr,
    };
    match check_request(&mut req, mem, capacity) {
        Ok(()) => Ok(req),
        Err(kind) => {
            // A refused request hands the buffer list back for the next one.
            *data = std::mem::take(&mut req.data);
            Err(fail(kind))
        }
    }
}

/// The checks that depend on the request type; may rewrite the kind, sector and length of
/// a discard or write-zeroes request from its segment.
fn check_request(
    req: &mut Request,
    mem: &GuestMemoryMmap,
    capacity: u64,
) -> Result<(), RequestErrorKind> {
    let kind = req.kind;
    match kind {
        RequestKind::In | RequestKind::Out => {
            if req.data_len == 0 {
                return Err(RequestErrorKind::NoData);
            }
            if !req.data_len.is_multiple_of(SECTOR_SIZE) {
                return Err(RequestErrorKind::UnalignedLength(req.data_len));
            }
            check_range(req.sector, req.data_len >> SECTOR_SHIFT, capacity)?;
        }
        RequestKind::GetId => {
            if req.data_len == 0 {
                return Err(RequestErrorKind::NoData);
            }
        }
        RequestKind::Flush => {}
        RequestKind::Discard | RequestKind::WriteZeroes { .. } => {
            if req.data_len == 0
                || !req.data_len.is_multiple_of(u64::from(SEGMENT_LEN))
                || req.data_len > u64::from(SEGMENT_LEN * MAX_SEGMENTS)
                || req.data[0].1 < SEGMENT_LEN
            {
                return Err(RequestErrorKind::BadSegments(req.data_len));
            }
            let seg: DiscardSegment =
                mem.read_obj(req.data[0].0)
                    .map_err(|_| RequestErrorKind::OutsideMemory {
                        addr: req.data[0].0 .0,
                        len: SEGMENT_LEN,
                    })?;
            let unmap = seg.flags & 1 != 0;
            // Bit 0 (unmap) only means something for write-zeroes; other bits are reserved.
            if seg.flags & !1 != 0 || (kind == RequestKind::Discard && unmap) {
                return Err(RequestErrorKind::BadFlags(seg.flags));
            }
            // The same limit is advertised as max_discard_sectors and
            // max_write_zeroes_sectors.
            if seg.num_sectors > MAX_DISCARD_SECTORS {
                return Err(RequestErrorKind::TooManySectors(seg.num_sectors));
            }
            check_range(seg.sector, u64::from(seg.num_sectors), capacity)?;
            if let RequestKind::WriteZeroes { .. } = kind {
                req.kind = RequestKind::WriteZeroes { unmap };
            }
            req.sector = seg.sector;
            req.data_len = u64::from(seg.num_sectors) << SECTOR_SHIFT;
        }
    }
    Ok(())
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
