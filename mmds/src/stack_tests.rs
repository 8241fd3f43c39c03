//! The endpoint fed Ethernet frames as a guest writes them: ARP, the TCP handshake, HTTP
//! requests, and hostile patterns (SYN floods, oversized requests, a guest that never reads).

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use super::*;
use crate::service::Version;

const GUEST_MAC: [u8; 6] = [6, 0, 0, 0, 0, 9];
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);
const MMDS_IP: Ipv4Addr = crate::DEFAULT_IPV4;

fn stack(version: Version) -> MmdsStack {
    let mut m = Mmds::new(51_200).unwrap();
    m.configure(version, false);
    m.put_data(serde_json::json!({"latest": {"meta-data": {"instance-id": "i-42"}}}))
        .unwrap();
    MmdsStack::new(&StackConfig { ipv4: MMDS_IP }, Arc::new(Mutex::new(m)))
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&GUEST_IP.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// A TCP segment from the guest, as an Ethernet frame.
fn segment(port: u16, control: TcpControl, seq: u32, ack: Option<u32>, payload: &[u8]) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: port,
        dst_port: 80,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 65_535,
        window_scale: None,
        max_seg_size: (control == TcpControl::Syn).then_some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let ip = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: MMDS_IP,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut f = vec![0u8; ETH_HDR + ip.buffer_len() + tcp.buffer_len()];
    f[0..6].copy_from_slice(&MMDS_MAC);
    f[6..12].copy_from_slice(&GUEST_MAC);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let caps = ChecksumCapabilities::default();
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut f[ETH_HDR..]), &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut f[ETH_HDR + 20..]),
        &IpAddress::Ipv4(GUEST_IP),
        &IpAddress::Ipv4(MMDS_IP),
        &caps,
    );
    f
}

/// What the guest got back, as (control, seq, ack, payload), checksums verified.
fn segments(s: &mut MmdsStack) -> Vec<(TcpControl, u32, Option<u32>, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(f) = s.next_frame() {
        assert_eq!(&f[0..6], &GUEST_MAC);
        assert_eq!(&f[6..12], &MMDS_MAC);
        let ip = Ipv4Packet::new_checked(&f[ETH_HDR..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (MMDS_IP, GUEST_IP));
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        let repr = TcpRepr::parse(
            &tcp,
            &IpAddress::Ipv4(MMDS_IP),
            &IpAddress::Ipv4(GUEST_IP),
            &ChecksumCapabilities::default(),
        )
        .unwrap();
        out.push((
            repr.control,
            repr.seq_number.0 as u32,
            repr.ack_number.map(|a| a.0 as u32),
            repr.payload.to_vec(),
        ));
    }
    out
}

/// Opens a connection from `port`; returns (our next seq, their next seq).
fn connect(s: &mut MmdsStack, port: u16) -> (u32, u32) {
    s.handle_frame(&segment(port, TcpControl::Syn, 1000, None, b""));
    // Other connections' segments (an evicted one's reset, data) may come along.
    let got: Vec<_> = segments(s)
        .into_iter()
        .filter(|g| g.0 == TcpControl::Syn)
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    let (control, seq, ack, _) = &got[0];
    assert_eq!((*control, *ack), (TcpControl::Syn, Some(1001)));
    let theirs = seq.wrapping_add(1);
    s.handle_frame(&segment(port, TcpControl::None, 1001, Some(theirs), b""));
    (1001, theirs)
}

/// Sends `request` on a fresh connection and returns the response bytes.
fn exchange(s: &mut MmdsStack, port: u16, request: &[u8]) -> String {
    let (seq, mut theirs) = connect(s, port);
    s.handle_frame(&segment(port, TcpControl::Psh, seq, Some(theirs), request));
    let mut body = Vec::new();
    let mut fin = false;
    for _ in 0..16 {
        let got = segments(s);
        if got.is_empty() {
            break;
        }
        for (control, _seq, _ack, payload) in got {
            body.extend_from_slice(&payload);
            theirs = theirs.wrapping_add(payload.len() as u32);
            if control == TcpControl::Fin {
                fin = true;
                theirs = theirs.wrapping_add(1);
            }
        }
        let seq = seq.wrapping_add(request.len() as u32);
        s.handle_frame(&segment(port, TcpControl::None, seq, Some(theirs), b""));
    }
    assert!(fin, "the server closes after Connection: close");
    String::from_utf8(body).unwrap()
}

#[test]
fn arp_for_the_mmds_address_is_answered_and_nothing_else_is_wanted() {
    let mut s = stack(Version::V1);
    let req = arp_request(MMDS_IP);
    assert!(s.wants(&req[..HEAD_LEN]));
    assert!(!s.wants(&arp_request(Ipv4Addr::new(172, 16, 0, 1))));
    s.handle_frame(&req);
    let reply = s.next_frame().unwrap();
    assert_eq!(&reply[0..6], &GUEST_MAC);
    assert_eq!(&reply[12..14], &[0x08, 0x06]);
    let arp = &reply[ETH_HDR..];
    assert_eq!(&arp[6..8], &[0, 2], "a reply");
    assert_eq!(&arp[8..14], &MMDS_MAC);
    assert_eq!(&arp[14..18], &MMDS_IP.octets());
    assert_eq!(&arp[18..24], &GUEST_MAC);
    assert_eq!(&arp[24..28], &GUEST_IP.octets());
    assert!(s.next_frame().is_none());
    // Other traffic: not ours.
    let mut other = segment(5000, TcpControl::Syn, 1, None, b"");
    other[ETH_HDR + 16..ETH_HDR + 20].copy_from_slice(&[172, 16, 0, 1]);
    assert!(!s.wants(&other));
    assert!(!s.wants(&other[..10]));
}

#[test]
fn an_http_get_over_tcp_returns_the_value() {
    let mut s = stack(Version::V1);
    let r = exchange(
        &mut s,
        40_000,
        b"GET /latest/meta-data/instance-id HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 200 \r\n"), "{r}");
    assert!(r.ends_with("\r\n\r\ni-42"), "{r}");
    let r = exchange(
        &mut s,
        40_001,
        b"GET /latest/meta-data HTTP/1.1\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
    );
    assert!(r.ends_with(r#"{"instance-id":"i-42"}"#), "{r}");
}

#[test]
fn v2_token_flow_over_tcp() {
    let mut s = stack(Version::V2);
    let r = exchange(
        &mut s,
        40_010,
        b"GET /latest/meta-data/instance-id HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 401 "), "{r}");
    let r = exchange(
        &mut s,
        40_011,
        b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
    let token = r.rsplit("\r\n\r\n").next().unwrap().to_owned();
    let get = format!(
        "GET /latest/meta-data/instance-id HTTP/1.1\r\nX-metadata-token: {token}\r\nConnection: close\r\n\r\n"
    );
    let r = exchange(&mut s, 40_012, get.as_bytes());
    assert!(r.ends_with("\r\n\r\ni-42"), "{r}");
}

#[test]
fn a_syn_flood_recycles_a_bounded_set_of_sockets() {
    let mut s = stack(Version::V1);
    let evicted = METRICS.connections_evicted.get();
    for port in 0..10_000u16 {
        s.handle_frame(&segment(1024 + port, TcpControl::Syn, 7, None, b""));
        // The guest never answers; it does take its frames (else they are dropped, bounded).
        while s.next_frame().is_some() {}
    }
    assert!(METRICS.connections_evicted.get() - evicted >= 10_000 - MAX_CONNECTIONS as u64);
    assert_eq!(s.sockets.iter().count(), MAX_CONNECTIONS);
    // A real client still gets through.
    let r = exchange(
        &mut s,
        50_000,
        b"GET /latest/meta-data/instance-id HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(r.ends_with("i-42"), "{r}");
}

#[test]
fn frames_for_a_guest_that_never_takes_them_stay_bounded() {
    let mut s = stack(Version::V1);
    for port in 0..1000u16 {
        s.handle_frame(&segment(2000 + port, TcpControl::Syn, 7, None, b""));
        s.handle_frame(&arp_request(MMDS_IP));
    }
    assert!(s.link.out.len() <= OUT_QUEUE + 1, "{}", s.link.out.len());
}

#[test]
fn an_oversized_request_is_refused_and_closed() {
    let mut s = stack(Version::V1);
    let (mut seq, mut theirs) = connect(&mut s, 41_000);
    let mut request = b"GET /".to_vec();
    request.extend(std::iter::repeat_n(b'a', 1400));
    let mut answer = Vec::new();
    let mut fin = false;
    // Keep sending: the window closes at SOCKET_RX, the server answers 400 and closes.
    for _ in 0..8 {
        s.handle_frame(&segment(
            41_000,
            TcpControl::Psh,
            seq,
            Some(theirs),
            &request,
        ));
        for (control, sseq, _ack, payload) in segments(&mut s) {
            if sseq == theirs {
                theirs = theirs.wrapping_add(payload.len() as u32);
                answer.extend_from_slice(&payload);
                if control == TcpControl::Fin {
                    fin = true;
                    theirs = theirs.wrapping_add(1);
                }
            }
        }
        seq = seq.wrapping_add(request.len() as u32);
        request = vec![b'a'; 1400];
    }
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.ends_with("Request too large."), "{answer}");
    assert!(fin);
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let mut s = stack(Version::V1);
    let (seq, theirs) = connect(&mut s, 42_000);
    let two = b"GET /latest HTTP/1.1\r\n\r\nGET /latest/meta-data HTTP/1.1\r\n\r\n";
    s.handle_frame(&segment(42_000, TcpControl::Psh, seq, Some(theirs), two));
    let body: Vec<u8> = segments(&mut s).into_iter().flat_map(|g| g.3).collect();
    let body = String::from_utf8(body).unwrap();
    assert_eq!(body.matches("HTTP/1.1 200 ").count(), 2, "{body}");
    assert!(body.contains("\r\n\r\nmeta-data/") && body.ends_with("\r\n\r\ninstance-id"));
}

#[test]
fn non_tcp_packets_to_the_address_are_dropped() {
    let mut s = stack(Version::V1);
    let mut f = segment(43_000, TcpControl::Syn, 1, None, b"");
    f[ETH_HDR + 9] = 17; // UDP
    assert!(s.wants(&f));
    let before = METRICS.rx_accepted_unusual.get();
    s.handle_frame(&f);
    assert!(s.next_frame().is_none());
    assert!(METRICS.rx_accepted_unusual.get() > before);
}

#[test]
fn overlapping_and_out_of_window_segments_do_not_confuse_the_stream() {
    let mut s = stack(Version::V1);
    let port = 44_000;
    let (seq, theirs) = connect(&mut s, port);
    // Far outside the window, then behind it: both ignored (at most an ACK).
    s.handle_frame(&segment(
        port,
        TcpControl::Psh,
        seq.wrapping_add(1 << 20),
        Some(theirs),
        b"GET /x HTTP/1.1\r\n\r\n",
    ));
    s.handle_frame(&segment(
        port,
        TcpControl::Psh,
        seq.wrapping_sub(5000),
        Some(theirs),
        b"junk",
    ));
    // The request in two segments that overlap by three bytes, the second one first.
    let request = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nConnection: close\r\n\r\n";
    s.handle_frame(&segment(
        port,
        TcpControl::Psh,
        seq.wrapping_add(10),
        Some(theirs),
        &request[10..],
    ));
    s.handle_frame(&segment(
        port,
        TcpControl::Psh,
        seq,
        Some(theirs),
        &request[..13],
    ));
    let mut body = Vec::new();
    for _ in 0..4 {
        let got = segments(&mut s);
        if got.is_empty() {
            break;
        }
        for (_, _, _, payload) in got {
            body.extend_from_slice(&payload);
        }
        // Ack everything so far (the test does not track the server's sequence exactly).
        let acked = theirs.wrapping_add(body.len() as u32);
        s.handle_frame(&segment(
            port,
            TcpControl::None,
            seq.wrapping_add(request.len() as u32),
            Some(acked),
            b"",
        ));
    }
    let body = String::from_utf8(body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200 "), "{body}");
    assert!(body.ends_with("\r\n\r\ni-42"), "{body}");
}

#[test]
fn responses_a_guest_never_acknowledges_are_capped() {
    let mut m = Mmds::new(51_200).unwrap();
    m.put_data(serde_json::json!({"blob": "b".repeat(45_000)}))
        .unwrap();
    let mut s = MmdsStack::new(&StackConfig { ipv4: MMDS_IP }, Arc::new(Mutex::new(m)));
    let request = b"GET /blob HTTP/1.1\r\nAccept: application/json\r\n\r\n";
    for i in 0..MAX_CONNECTIONS as u16 {
        let port = 45_000 + i;
        let (seq, theirs) = connect(&mut s, port);
        s.handle_frame(&segment(port, TcpControl::Psh, seq, Some(theirs), request));
        // The guest takes its frames but never acknowledges the data in them.
        while s.next_frame().is_some() {}
    }
    let answered = s.conns.iter().filter(|c| !c.resp.is_empty()).count();
    assert!(
        s.pending <= RESPONSE_BUDGET + 46_000,
        "{} bytes held",
        s.pending
    );
    assert!(
        answered < MAX_CONNECTIONS,
        "every request was answered: nothing capped"
    );
    let waiting = s
        .conns
        .iter()
        .filter(|c| c.open && c.resp.is_empty() && !c.req.is_empty());
    assert!(waiting.count() > 0, "requests wait for the budget");
}
