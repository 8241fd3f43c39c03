//! The snapshot state file's container: a fixed header, then the postcard-encoded
//! [`Snapshot`].
//!
//! ```text
//! offset size
//!      0    8  magic "XENIASNP"
//!      8    4  format version (u32 LE), SNAPSHOT_FORMAT_VERSION
//!     12    4  architecture (u32 LE), 1 = x86_64
//!     16    8  payload length in bytes (u64 LE), at most MAX_STATE_BYTES
//!     24    8  CRC-64/XZ of the payload (u64 LE)
//!     32    -  payload
//! ```
//!
//! Every header field is checked on its own (so a wrong version or architecture is named as
//! such), the checksum covers the payload, and the payload is decoded only after the length
//! and checksum match, with nothing left over. Why postcard: the state is mostly KVM
//! structures (kvm-bindings serialises them as raw bytes) and lists; postcard's varint
//! encoding is compact (a 1-vCPU state is ~11 KiB, where JSON would spell every byte of the
//! xsave and LAPIC areas as decimal text, 3–4× larger and far slower to parse), its wire
//! format is specified and stable across 1.x, and a length prefix cannot make it allocate
//! more than the (capped) input holds.

use super::{Snapshot, SNAPSHOT_FORMAT_VERSION};

pub const MAGIC: [u8; 8] = *b"XENIASNP";
pub const HEADER_LEN: usize = 32;
/// Largest state file accepted (a VM with 255 vCPUs and every device is far below).
pub const MAX_STATE_BYTES: u64 = 32 << 20;
/// The architecture id of this build.
pub const ARCH_X86_64: u32 = 1;
pub const ARCH_AARCH64: u32 = 2;

/// Why a state file was refused; each message names the problem.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("the state file is truncated: {got} bytes, the header alone needs {HEADER_LEN}")]
    TooShortForHeader { got: usize },
    #[error("not a xenia snapshot state file (bad magic)")]
    BadMagic,
    #[error(
        "the state file has format version {got}; this xenia reads version \
         {SNAPSHOT_FORMAT_VERSION} only"
    )]
    Version { got: u32 },
    #[error("the state file was made for the {got} architecture; this xenia runs x86_64")]
    Arch { got: String },
    #[error(
        "the state file's payload claims {got} bytes, more than the {MAX_STATE_BYTES} allowed"
    )]
    TooLarge { got: u64 },
    #[error("the state file is truncated or has trailing data: payload of {expected} bytes announced, {got} present")]
    Length { expected: u64, got: u64 },
    #[error("the state file is corrupted: checksum {got:#018x} does not match {expected:#018x}")]
    Checksum { expected: u64, got: u64 },
    #[error("the state file's contents do not decode: {0}")]
    Payload(String),
    #[error("the state file's contents decode with {0} bytes left over")]
    Trailing(usize),
}

fn arch_name(id: u32) -> String {
    match id {
        ARCH_X86_64 => "x86_64".into(),
        ARCH_AARCH64 => "aarch64".into(),
        other => format!("unknown (id {other})"),
    }
}

/// Encodes `snapshot` with its header.
pub fn encode(snapshot: &Snapshot) -> Result<Vec<u8>, String> {
    let payload = postcard::to_stdvec(snapshot).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&ARCH_X86_64.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc64(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The header fields, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub payload_len: u64,
    pub checksum: u64,
}

/// Checks the header of `bytes` (magic, version, architecture, length bound).
pub fn decode_header(bytes: &[u8]) -> Result<Header, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::TooShortForHeader { got: bytes.len() });
    }
    if bytes[..8] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = u32_at(bytes, 8);
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(DecodeError::Version { got: version });
    }
    let arch = u32_at(bytes, 12);
    if arch != ARCH_X86_64 {
        return Err(DecodeError::Arch {
            got: arch_name(arch),
        });
    }
    let payload_len = u64_at(bytes, 16);
    if payload_len > MAX_STATE_BYTES {
        return Err(DecodeError::TooLarge { got: payload_len });
    }
    Ok(Header {
        version,
        payload_len,
        checksum: u64_at(bytes, 24),
    })
}

/// Decodes a whole state file. Pure: no KVM, no file system; the values inside are checked
/// by [`Snapshot::validate`] before use.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, DecodeError> {
    let header = decode_header(bytes)?;
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != header.payload_len {
        return Err(DecodeError::Length {
            expected: header.payload_len,
            got: payload.len() as u64,
        });
    }
    let sum = crc64(payload);
    if sum != header.checksum {
        return Err(DecodeError::Checksum {
            expected: header.checksum,
            got: sum,
        });
    }
    let (snapshot, rest) = postcard::take_from_bytes::<Snapshot>(payload)
        .map_err(|e| DecodeError::Payload(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(snapshot)
}

/// CRC-64/XZ (ECMA-182 polynomial, reflected, init and xorout all ones): any single flipped
/// bit or byte changes it.
pub fn crc64(data: &[u8]) -> u64 {
    let mut crc = u64::MAX;
    for &b in data {
        crc = CRC64_TABLE[((crc ^ u64::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

const CRC64_POLY_REFLECTED: u64 = 0xc96c_5795_d787_0f42;

const CRC64_TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ CRC64_POLY_REFLECTED
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_xz_check_value() {
        // The catalogue check value of CRC-64/XZ over "123456789".
        assert_eq!(crc64(b"123456789"), 0x995d_c9bb_df19_39fa);
    }

    #[test]
    fn header_errors_name_the_problem() {
        let snap = super::super::tests::sample_snapshot();
        let good = encode(&snap).unwrap();
        assert!(decode(&good).is_ok());

        assert!(matches!(
            decode(&good[..10]),
            Err(DecodeError::TooShortForHeader { got: 10 })
        ));
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert_eq!(decode(&bad).unwrap_err(), DecodeError::BadMagic);
        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&99u32.to_le_bytes());
        assert_eq!(decode(&bad).unwrap_err(), DecodeError::Version { got: 99 });
        let mut bad = good.clone();
        bad[12..16].copy_from_slice(&ARCH_AARCH64.to_le_bytes());
        assert!(decode(&bad).unwrap_err().to_string().contains("aarch64"));
        let mut bad = good.clone();
        bad[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode(&bad), Err(DecodeError::TooLarge { .. })));
        assert!(matches!(
            decode(&good[..good.len() - 1]),
            Err(DecodeError::Length { .. })
        ));
    }

    #[test]
    fn every_flipped_payload_byte_is_caught() {
        let good = encode(&super::super::tests::sample_snapshot()).unwrap();
        for i in HEADER_LEN..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(
                matches!(decode(&bad), Err(DecodeError::Checksum { .. })),
                "byte {i}"
            );
        }
    }

    #[test]
    fn garbage_with_a_valid_checksum_is_refused_without_panic() {
        for len in [0usize, 1, 7, 64, 1000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let mut file = Vec::new();
            file.extend_from_slice(&MAGIC);
            file.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
            file.extend_from_slice(&ARCH_X86_64.to_le_bytes());
            file.extend_from_slice(&(len as u64).to_le_bytes());
            file.extend_from_slice(&crc64(&payload).to_le_bytes());
            file.extend_from_slice(&payload);
            assert!(decode(&file).is_err(), "len {len}");
        }
    }
}
