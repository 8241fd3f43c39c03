//! The snapshot state-file decoder (`vmm::persist::decode`): the container header, the
//! checksum, the postcard payload and the checks of every value (`Snapshot::validate`), as
//! `PUT /snapshot/load` and `--describe-snapshot` run them on an untrusted file.
//!
//! The first input byte chooses whether the rest is taken as a whole file (odd) or as a
//! payload that gets a valid header and checksum (even), so that mutations reach the decoder
//! behind the checksum. Property checked: whatever decodes encodes back to bytes that decode
//! to the same encoding (nothing is lost or invented on a round trip).

use vmm::persist::container::{crc64, ARCH_X86_64, MAGIC};
use vmm::persist::{decode, describe, encode, SNAPSHOT_FORMAT_VERSION};

/// `payload` behind a valid header.
pub fn with_header(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&ARCH_X86_64.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc64(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode % 2 == 0 {
        with_header(rest)
    } else {
        rest.to_vec()
    };
    let Ok(snapshot) = decode(&file) else {
        return;
    };
    let _ = snapshot.validate();
    let _ = describe(&file);
    let again = encode(&snapshot).expect("a decoded snapshot encodes");
    let back = decode(&again).expect("an encoded snapshot decodes");
    assert_eq!(
        encode(&back).expect("encodes"),
        again,
        "a round trip changed the snapshot"
    );
}
