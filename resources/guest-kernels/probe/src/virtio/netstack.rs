//! Ethernet, ARP, IPv4, ICMP echo and UDP, built and parsed by hand (only
//! what the `net-*` commands need). Checksums are the RFC 1071 one's
//! complement sums; UDP carries a real checksum (pseudo-header included).

pub type Mac = [u8; 6];
pub type Ip = [u8; 4];

pub const ETH_HDR: usize = 14;
pub const IP_HDR: usize = 20;
pub const UDP_HDR: usize = 8;
pub const ICMP_HDR: usize = 8;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_UDP: u8 = 17;
pub const BROADCAST: Mac = [0xff; 6];

/// Parses dotted-quad `a.b.c.d`.
pub fn parse_ip(s: &[u8]) -> Option<Ip> {
    let mut ip = [0u8; 4];
    let mut n = 0;
    for part in s.split(|&b| b == b'.') {
        if n == 4 || part.is_empty() || part.len() > 3 {
            return None;
        }
        let v = crate::cmdline::parse_u64(part)?;
        ip[n] = u8::try_from(v).ok()?;
        n += 1;
    }
    (n == 4).then_some(ip)
}

pub struct IpShow(pub Ip);

impl core::fmt::Display for IpShow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{}.{}.{}.{}", a, b, c, d)
    }
}

pub struct MacShow(pub Mac);

impl core::fmt::Display for MacShow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            let pair = [HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]];
            f.write_str(crate::cmdline::as_text(&pair))?;
        }
        Ok(())
    }
}

fn put16(b: &mut [u8], v: u16) {
    b[..2].copy_from_slice(&v.to_be_bytes());
}

fn get16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// One's complement sum of `data` (big-endian 16-bit words), unfolded.
pub fn sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        acc = acc.wrapping_add(u32::from(get16(w)));
    }
    if let [last] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(*last) << 8);
    }
    acc
}

pub fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

pub fn eth(b: &mut [u8], dst: Mac, src: Mac, ethertype: u16) {
    b[0..6].copy_from_slice(&dst);
    b[6..12].copy_from_slice(&src);
    put16(&mut b[12..], ethertype);
}

/// ARP over Ethernet/IPv4; `op` 1 = request, 2 = reply. Returns the frame length.
pub fn arp(b: &mut [u8], op: u16, sha: Mac, spa: Ip, tha: Mac, tpa: Ip) -> usize {
    let dst = if op == 1 { BROADCAST } else { tha };
    eth(b, dst, sha, ETHERTYPE_ARP);
    let a = &mut b[ETH_HDR..];
    put16(&mut a[0..], 1); // Ethernet
    put16(&mut a[2..], ETHERTYPE_IPV4);
    a[4] = 6;
    a[5] = 4;
    put16(&mut a[6..], op);
    a[8..14].copy_from_slice(&sha);
    a[14..18].copy_from_slice(&spa);
    a[18..24].copy_from_slice(&tha);
    a[24..28].copy_from_slice(&tpa);
    // Pad to the 60-byte Ethernet minimum.
    b[ETH_HDR + 28..60].fill(0);
    60
}

/// IPv4 header (no options, DF clear, TTL 64) at `b[0..20]`.
pub fn ipv4(b: &mut [u8], src: Ip, dst: Ip, proto: u8, payload_len: usize, id: u16) {
    b[0] = 0x45;
    b[1] = 0;
    put16(&mut b[2..], (IP_HDR + payload_len) as u16);
    put16(&mut b[4..], id);
    put16(&mut b[6..], 0);
    b[8] = 64;
    b[9] = proto;
    put16(&mut b[10..], 0);
    b[12..16].copy_from_slice(&src);
    b[16..20].copy_from_slice(&dst);
    let c = fold(sum(&b[..IP_HDR], 0));
    put16(&mut b[10..], c);
}

/// ICMP echo (request: `kind` 8, reply: 0) over `b[..8 + payload]`, payload already in place.
pub fn icmp_echo(b: &mut [u8], kind: u8, id: u16, seq: u16, payload_len: usize) {
    b[0] = kind;
    b[1] = 0;
    put16(&mut b[2..], 0);
    put16(&mut b[4..], id);
    put16(&mut b[6..], seq);
    let c = fold(sum(&b[..ICMP_HDR + payload_len], 0));
    put16(&mut b[2..], c);
}

/// UDP header over `b[..8 + payload]`, payload already in place, checksum included.
pub fn udp(b: &mut [u8], src: Ip, dst: Ip, sport: u16, dport: u16, payload_len: usize) {
    let len = (UDP_HDR + payload_len) as u16;
    put16(&mut b[0..], sport);
    put16(&mut b[2..], dport);
    put16(&mut b[4..], len);
    put16(&mut b[6..], 0);
    let mut acc = sum(&src, 0);
    acc = sum(&dst, acc);
    acc = acc
        .wrapping_add(u32::from(PROTO_UDP))
        .wrapping_add(u32::from(len));
    let c = fold(sum(&b[..len as usize], acc));
    // 0 means "no checksum" in UDP over IPv4: send 0xffff instead.
    put16(&mut b[6..], if c == 0 { 0xffff } else { c });
}

/// Full Ethernet + IPv4 + UDP frame around a payload already at
/// `b[42..42 + payload_len]`; returns the frame length.
#[allow(clippy::too_many_arguments)]
pub fn udp_frame(
    b: &mut [u8],
    dst_mac: Mac,
    src_mac: Mac,
    src: Ip,
    dst: Ip,
    sport: u16,
    dport: u16,
    payload_len: usize,
    id: u16,
) -> usize {
    eth(b, dst_mac, src_mac, ETHERTYPE_IPV4);
    ipv4(
        &mut b[ETH_HDR..],
        src,
        dst,
        PROTO_UDP,
        UDP_HDR + payload_len,
        id,
    );
    udp(
        &mut b[ETH_HDR + IP_HDR..],
        src,
        dst,
        sport,
        dport,
        payload_len,
    );
    ETH_HDR + IP_HDR + UDP_HDR + payload_len
}

pub struct EthFrame<'a> {
    pub dst: Mac,
    pub src: Mac,
    pub ethertype: u16,
    pub payload: &'a [u8],
}

pub fn parse_eth(f: &[u8]) -> Option<EthFrame<'_>> {
    if f.len() < ETH_HDR {
        return None;
    }
    let mut dst = [0; 6];
    let mut src = [0; 6];
    dst.copy_from_slice(&f[0..6]);
    src.copy_from_slice(&f[6..12]);
    Some(EthFrame {
        dst,
        src,
        ethertype: get16(&f[12..]),
        payload: &f[ETH_HDR..],
    })
}

pub struct Arp {
    pub op: u16,
    pub sha: Mac,
    pub spa: Ip,
    pub tpa: Ip,
}

pub fn parse_arp(p: &[u8]) -> Option<Arp> {
    if p.len() < 28 || get16(p) != 1 || get16(&p[2..]) != ETHERTYPE_IPV4 || p[4] != 6 || p[5] != 4 {
        return None;
    }
    let mut a = Arp {
        op: get16(&p[6..]),
        sha: [0; 6],
        spa: [0; 4],
        tpa: [0; 4],
    };
    a.sha.copy_from_slice(&p[8..14]);
    a.spa.copy_from_slice(&p[14..18]);
    a.tpa.copy_from_slice(&p[24..28]);
    Some(a)
}

pub struct Ipv4<'a> {
    pub src: Ip,
    pub dst: Ip,
    pub proto: u8,
    pub ttl: u8,
    pub payload: &'a [u8],
}

/// Parses an unfragmented IPv4 packet with a valid header checksum.
pub fn parse_ipv4(p: &[u8]) -> Option<Ipv4<'_>> {
    if p.len() < IP_HDR || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = (p[0] & 0xf) as usize * 4;
    let total = get16(&p[2..]) as usize;
    if ihl < IP_HDR || total < ihl || total > p.len() || fold(sum(&p[..ihl], 0)) != 0 {
        return None;
    }
    // More-fragments set or a fragment offset: not for us.
    if get16(&p[6..]) & 0x3fff != 0 {
        return None;
    }
    let mut ip = Ipv4 {
        src: [0; 4],
        dst: [0; 4],
        proto: p[9],
        ttl: p[8],
        payload: &p[ihl..total],
    };
    ip.src.copy_from_slice(&p[12..16]);
    ip.dst.copy_from_slice(&p[16..20]);
    Some(ip)
}

pub struct Udp<'a> {
    pub sport: u16,
    pub dport: u16,
    pub payload: &'a [u8],
}

pub fn parse_udp(p: &[u8]) -> Option<Udp<'_>> {
    if p.len() < UDP_HDR {
        return None;
    }
    let len = get16(&p[4..]) as usize;
    if len < UDP_HDR || len > p.len() {
        return None;
    }
    Some(Udp {
        sport: get16(p),
        dport: get16(&p[2..]),
        payload: &p[UDP_HDR..len],
    })
}

/// (type, id, seq, payload) of an ICMP echo message with a valid checksum.
pub fn parse_icmp_echo(p: &[u8]) -> Option<(u8, u16, u16, &[u8])> {
    if p.len() < ICMP_HDR || fold(sum(p, 0)) != 0 {
        return None;
    }
    Some((p[0], get16(&p[4..]), get16(&p[6..]), &p[ICMP_HDR..]))
}
