//! The metadata service as a hostile guest meets it: the per-interface endpoint
//! (`mmds::MmdsStack`: ARP, smoltcp TCP, the HTTP parser, the service's answers and tokens)
//! fed raw Ethernet frames and TCP segments that follow the server's sequence numbers, so
//! that requests get through to the HTTP layer.
//!
//! Properties besides "no panic": every frame for the guest comes from the MMDS MAC to the
//! last MAC the guest wrote from, is ARP or IPv4 from the MMDS address, and no step makes
//! the endpoint hold more frames than its queue bound; every HTTP answer the guest reads
//! starts with a status line whose code xenia's MMDS uses.
//!
//! Input layout: `flags: u8` (bit 0: V2, bit 1: imds_compat), then steps `kind: u8`:
//! kind % 4 = 0: a raw frame, `len: u8` then that many bytes after a fixed Ethernet header to
//! the MMDS address (ethertype from the first two bytes); 1: a SYN from port `40000 + p: u8`;
//! 2: a segment on port p, `len: u16` then payload bytes, at the next sequence number; 3: the
//! guest takes up to `n: u8` frames and acknowledges what it read.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use mmds::stack::{MmdsStack, StackConfig, MMDS_MAC, OUT_QUEUE};

use crate::input::Input;

const GUEST_MAC: [u8; 6] = [6, 0, 0, 0, 0, 7];
const GUEST_IP: [u8; 4] = [172, 16, 0, 2];
const MMDS_IP: [u8; 4] = [169, 254, 169, 254];
const STATUSES: [&str; 8] = ["200", "400", "401", "404", "405", "413", "501", "500"];

/// One guest-side connection: our next sequence number, the server's next one, and the
/// start of the response bytes read so far.
#[derive(Default)]
struct Conn {
    snd: u32,
    rcv: Option<u32>,
    head: Vec<u8>,
}

fn eth_ip_tcp(port: u16, seq: u32, ack: Option<u32>, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(54 + payload.len());
    f.extend_from_slice(&MMDS_MAC);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (40 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&MMDS_IP);
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&80u16.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&ack.unwrap_or(0).to_be_bytes());
    let ack_flag = if ack.is_some() { 0x10 } else { 0 };
    // Checksums stay zero: the endpoint does not verify them (guest frames may carry partial
    // checksums under offload).
    f.extend_from_slice(&[5 << 4, flags | ack_flag, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Checks one frame for the guest and, for TCP, moves the connection's receive state.
fn take(frame: &[u8], conns: &mut HashMap<u16, Conn>) {
    assert!(frame.len() >= 42, "a runt frame for the guest: {frame:?}");
    assert_eq!(&frame[6..12], &MMDS_MAC, "from the MMDS MAC");
    match [frame[12], frame[13]] {
        // An ARP reply goes to the asker the request named.
        [0x08, 0x06] => assert_eq!(&frame[14 + 14..14 + 18], &MMDS_IP),
        [0x08, 0x00] => {
            assert_eq!(&frame[0..6], &GUEST_MAC, "to the MAC the guest wrote from");
            let ip = &frame[14..];
            assert_eq!(&ip[12..16], &MMDS_IP, "from the MMDS address");
            let ihl = usize::from(ip[0] & 0xf) * 4;
            let tcp = &ip[ihl..];
            let port = u16::from_be_bytes([tcp[2], tcp[3]]);
            let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            let off = usize::from(tcp[12] >> 4) * 4;
            let flags = tcp[13];
            let payload = &tcp[off.min(tcp.len())..];
            let Some(c) = conns.get_mut(&port) else {
                return;
            };
            if flags & 0x02 != 0 {
                c.rcv = Some(seq.wrapping_add(1));
            } else if c.rcv == Some(seq) {
                if c.head.len() < 16 {
                    c.head.extend_from_slice(&payload[..payload.len().min(16)]);
                }
                let fin = u32::from(flags & 0x01 != 0);
                c.rcv = Some(seq.wrapping_add(payload.len() as u32).wrapping_add(fin));
            }
            if c.head.len() >= 13 {
                let head = &c.head;
                assert!(head.starts_with(b"HTTP/1."), "not a response: {head:?}");
                assert!(
                    STATUSES.iter().any(|s| head[9..12] == *s.as_bytes()),
                    "a status the MMDS does not use: {head:?}"
                );
            }
        }
        other => panic!("a frame of ethertype {other:02x?} for the guest"),
    }
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let Ok(mut service) = mmds::Mmds::new(4096) else {
        return;
    };
    let version = if flags & 1 != 0 {
        mmds::Version::V2
    } else {
        mmds::Version::V1
    };
    service.configure(version, flags & 2 != 0);
    let _ = service.put_data(serde_json::json!({
        "latest": {"meta-data": {"instance-id": "i-1", "n": 1, "tags": {"a": "b"}}}
    }));
    let config = StackConfig {
        ipv4: Ipv4Addr::from(MMDS_IP),
    };
    let mut stack = MmdsStack::new(&config, Arc::new(Mutex::new(service)));
    let mut conns: HashMap<u16, Conn> = HashMap::new();
    let mut steps = 0;
    while !input.is_empty() && steps < 256 {
        steps += 1;
        match input.u8() % 4 {
            0 => {
                let len = usize::from(input.u8());
                let body = input.bytes(len);
                let mut f = Vec::with_capacity(14 + body.len());
                f.extend_from_slice(&[0xff; 6]);
                f.extend_from_slice(&GUEST_MAC);
                f.extend_from_slice(body);
                if stack.wants(&f[..f.len().min(mmds::stack::HEAD_LEN)]) {
                    stack.handle_frame(&f);
                }
            }
            1 => {
                let port = 40_000 + u16::from(input.u8());
                conns.insert(
                    port,
                    Conn {
                        snd: 1001,
                        ..Conn::default()
                    },
                );
                stack.handle_frame(&eth_ip_tcp(port, 1000, None, 0x02, &[]));
            }
            2 => {
                let port = 40_000 + u16::from(input.u8());
                let len = usize::from(input.u16() % 2048);
                let payload = input.bytes(len);
                let Some(c) = conns.get_mut(&port) else {
                    continue;
                };
                let frame = eth_ip_tcp(port, c.snd, c.rcv, 0x08, payload);
                c.snd = c.snd.wrapping_add(payload.len() as u32);
                stack.handle_frame(&frame);
            }
            _ => {
                let n = input.u8();
                let mut got = 0usize;
                for _ in 0..n {
                    let Some(frame) = stack.next_frame() else {
                        break;
                    };
                    got += 1;
                    take(&frame, &mut conns);
                }
                assert!(got <= OUT_QUEUE + 1, "{got} frames held for the guest");
                for (port, c) in &conns {
                    if c.rcv.is_some() {
                        stack.handle_frame(&eth_ip_tcp(*port, c.snd, c.rcv, 0, &[]));
                    }
                }
            }
        }
    }
}

/// A V1 and a V2 session: connect, request, read; and an ARP request.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let request = |port: u8, text: &str| {
        let mut s = vec![2, port];
        s.extend_from_slice(&(text.len() as u16).to_le_bytes());
        s.extend_from_slice(text.as_bytes());
        s
    };
    let session = |flags: u8, texts: &[&str]| {
        let mut s = vec![flags];
        for (i, t) in texts.iter().enumerate() {
            let port = i as u8;
            s.extend_from_slice(&[1, port, 3, 8]);
            s.extend(request(port, t));
            s.extend_from_slice(&[3, 64, 3, 64]);
        }
        s
    };
    let mut arp = vec![0u8, 0, 30, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&GUEST_MAC);
    arp.extend_from_slice(&GUEST_IP);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&MMDS_IP);
    arp.extend_from_slice(&[3, 4]);
    vec![
        (
            "v1",
            session(
                0,
                &[
                    "GET /latest/meta-data HTTP/1.1\r\n\r\n",
                    "GET /latest/meta-data/n HTTP/1.1\r\nAccept: application/json\r\n\r\n",
                    "GET /latest HTTP/1.0\r\n\r\n",
                ],
            ),
        ),
        (
            "v2",
            session(
                1,
                &[
                    "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
                    "GET /latest/meta-data/instance-id HTTP/1.1\r\nX-metadata-token: 00\r\n\r\n",
                ],
            ),
        ),
        ("arp", arp),
    ]
}
