//! The `net-mmds-*` commands: HTTP/1.1 to the metadata service over [`super::tcp`], one
//! connection per request (`Connection: close`). A V2 session token from `net-mmds-token` is
//! kept for later commands of the same run.

use super::net_cmds::{micros, Stack};
use super::netstack::{self as ns, Ip, IpShow};
use super::tcp::{self, Conn};
use super::{fields, VirtioError};
use crate::arch::cpu::rdtsc;
use crate::cmdline::{as_text, parse_u64};
use crate::sync::BootCell;
use crate::timer::Deadline;
use crate::{sprint, sprintln};

const HTTP_PORT: u16 = 80;
/// How long to wait for the whole response once the request is sent.
const RESPONSE_US: u64 = 5_000_000;
/// Longest token kept.
const TOKEN_MAX: usize = 128;

static TOKEN: BootCell<([u8; TOKEN_MAX], usize)> = BootCell::new(([0; TOKEN_MAX], 0));
/// Source ports: a fresh one per connection.
static NEXT_PORT: BootCell<u16> = BootCell::new(33_000);

fn next_port() -> u16 {
    NEXT_PORT.with(|p| {
        *p = if *p >= 60_000 { 33_000 } else { *p + 1 };
        *p
    })
}

/// A byte buffer that `core::fmt` can write into.
struct Buf<const N: usize> {
    b: [u8; N],
    n: usize,
}

impl<const N: usize> Buf<N> {
    fn new() -> Self {
        Self { b: [0; N], n: 0 }
    }
    fn push(&mut self, bytes: &[u8]) {
        let take = bytes.len().min(N - self.n);
        self.b[self.n..self.n + take].copy_from_slice(&bytes[..take]);
        self.n += take;
    }
    fn bytes(&self) -> &[u8] {
        &self.b[..self.n]
    }
}

impl<const N: usize> core::fmt::Write for Buf<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// A parsed response.
struct Answer {
    status: u16,
    body_at: usize,
}

fn parse_answer(r: &[u8]) -> Option<Answer> {
    if r.len() < 12 || !r.starts_with(b"HTTP/1.") {
        return None;
    }
    let status = parse_u64(&r[9..12])? as u16;
    let body_at = r.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    Some(Answer { status, body_at })
}

/// One request on a fresh connection; the response is left in `conn.rx`.
fn exchange(st: &mut Stack, ip: Ip, request: &[u8]) -> Result<Option<Conn>, VirtioError> {
    let Some((mac, _)) = st.arp(ip)? else {
        return Ok(None);
    };
    let Some(mut c) = Conn::connect(st, mac, ip, next_port(), HTTP_PORT)? else {
        return Ok(None);
    };
    if c.send_all(st, request)? {
        c.recv_to_close(st, RESPONSE_US)?;
    }
    c.close(st)?;
    Ok(Some(c))
}

/// Prints ` status= len= body=` with the body's newlines as `\n` (it ends the line).
fn print_answer(r: &[u8]) {
    match parse_answer(r) {
        Some(a) => {
            let body = &r[a.body_at..];
            sprint!(" status={} len={} body=", a.status, body.len());
            let mut out = Buf::<512>::new();
            for &b in body.iter().take(256) {
                match b {
                    b'\n' => out.push(b"\\n"),
                    b'\r' => out.push(b"\\r"),
                    0x20..=0x7e => out.push(&[b]),
                    _ => out.push(b"?"),
                }
            }
            sprintln!("{}", as_text(out.bytes()));
        }
        None => sprintln!(" status=none len={} body=", r.len()),
    }
}

fn token_header(out: &mut Buf<1024>, flags: &[u8]) {
    if flags.contains(&b't') {
        TOKEN.with(|(t, n)| {
            out.push(b"X-metadata-token: ");
            out.push(&t[..*n]);
            out.push(b"\r\n");
        });
    }
    if flags.contains(&b'x') {
        out.push(b"X-metadata-token: 00112233445566778899aabbccddeeff\r\n");
    }
}

fn get_request(path: &[u8], flags: &[u8]) -> Buf<1024> {
    let mut r = Buf::<1024>::new();
    r.push(b"GET ");
    r.push(path);
    r.push(b" HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n");
    if flags.contains(&b'j') {
        r.push(b"Accept: application/json\r\n");
    }
    token_header(&mut r, flags);
    r.push(b"\r\n");
    r
}

/// `net-mmds-get:IP:PATH[:FLAGS]`: FLAGS `j` JSON, `t` the kept token, `x` a forged token.
fn get(st: &mut Stack, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    let (f, n) = fields::<3>(arg);
    let (Some(ip), true) = (ns::parse_ip(f[0]), n >= 2) else {
        sprintln!("PROBE net-mmds-get FAIL bad-argument want=IP:PATH[:FLAGS]");
        return Ok(());
    };
    let request = get_request(f[1], f[2]);
    let start = rdtsc();
    match exchange(st, ip, request.bytes())? {
        Some(c) => {
            sprint!(
                "PROBE net-mmds-get ok ip={} path={} us={}",
                IpShow(ip),
                as_text(f[1]),
                micros(rdtsc().wrapping_sub(start))
            );
            print_answer(c.received());
        }
        None => sprintln!("PROBE net-mmds-get FAIL no-connection ip={}", IpShow(ip)),
    }
    Ok(())
}

/// `net-mmds-token:IP:TTL`: `PUT /latest/api/token`; a 200's body is kept as the token.
fn token(st: &mut Stack, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    let (f, n) = fields::<2>(arg);
    let (Some(ip), true) = (ns::parse_ip(f[0]), n == 2) else {
        sprintln!("PROBE net-mmds-token FAIL bad-argument want=IP:TTL");
        return Ok(());
    };
    let Some(c) = fetch_token(st, ip, f[1])? else {
        sprintln!("PROBE net-mmds-token FAIL no-connection ip={}", IpShow(ip));
        return Ok(());
    };
    sprint!("PROBE net-mmds-token ok ip={}", IpShow(ip));
    print_answer(c.received());
    Ok(())
}

/// `PUT /latest/api/token` with `ttl`; a 200's body becomes the kept token.
fn fetch_token(st: &mut Stack, ip: Ip, ttl: &[u8]) -> Result<Option<Conn>, VirtioError> {
    let mut r = Buf::<1024>::new();
    r.push(b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\nX-metadata-token-ttl-seconds: ");
    r.push(ttl);
    r.push(b"\r\n\r\n");
    let Some(c) = exchange(st, ip, r.bytes())? else {
        return Ok(None);
    };
    let got = c.received();
    if let Some(a) = parse_answer(got).filter(|a| a.status == 200) {
        let body = &got[a.body_at..];
        TOKEN.with(|(t, len)| {
            let k = body.len().min(TOKEN_MAX);
            t[..k].copy_from_slice(&body[..k]);
            *len = k;
        });
    }
    Ok(Some(c))
}

/// `net-mmds-until:IP:PATH:VALUE[:FLAGS]`: GETs every 50 ms until the body is VALUE (60 s).
/// FLAGS as for `net-mmds-get`, plus `T`: on a 401, fetch a new token (TTL 60) and go on.
fn until(st: &mut Stack, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    let (f, n) = fields::<4>(arg);
    let (Some(ip), true) = (ns::parse_ip(f[0]), n >= 3) else {
        sprintln!("PROBE net-mmds-until FAIL bad-argument want=IP:PATH:VALUE[:FLAGS]");
        return Ok(());
    };
    let mut request = get_request(f[1], f[3]);
    let deadline = Deadline::after_us(60_000_000);
    let start = rdtsc();
    let mut tries = 0u32;
    let mut tokens = 0u32;
    // Says when the first answer (the old value) arrived: the host changes the store then.
    let mut announced = false;
    while !deadline.passed() {
        tries += 1;
        if let Some(c) = exchange(st, ip, request.bytes())? {
            let got = c.received();
            if let Some(a) = parse_answer(got) {
                if &got[a.body_at..] == f[2] {
                    sprintln!(
                        "PROBE net-mmds-until ok ip={} path={} tries={} tokens={} us={}",
                        IpShow(ip),
                        as_text(f[1]),
                        tries,
                        tokens,
                        micros(rdtsc().wrapping_sub(start))
                    );
                    return Ok(());
                }
                if a.status == 401 && f[3].contains(&b'T') {
                    tokens += 1;
                    fetch_token(st, ip, b"60")?;
                    // The request carries the token: build it again.
                    request = get_request(f[1], f[3]);
                }
                if !announced {
                    sprint!("PROBE net-mmds-until-first");
                    print_answer(got);
                    announced = true;
                }
            }
        }
        crate::timer::delay_us(50_000);
    }
    sprintln!("PROBE net-mmds-until FAIL timeout tries={}", tries);
    Ok(())
}

/// `net-mmds-hostile:IP:SYNS:HALF:BIG`: SYNS connection requests never completed, HALF
/// connections left with half a request, then one request head of BIG bytes; reports how
/// the big one was answered.
fn hostile(st: &mut Stack, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    let (f, n) = fields::<4>(arg);
    let parsed = (
        ns::parse_ip(f[0]),
        parse_u64(f[1]),
        parse_u64(f[2]),
        parse_u64(f[3]),
    );
    let (Some(ip), Some(syns), Some(half), Some(big), 4) =
        (parsed.0, parsed.1, parsed.2, parsed.3, n)
    else {
        sprintln!("PROBE net-mmds-hostile FAIL bad-argument want=IP:SYNS:HALF:BIG");
        return Ok(());
    };
    let Some((mac, _)) = st.arp(ip)? else {
        sprintln!("PROBE net-mmds-hostile FAIL no-arp-reply ip={}", IpShow(ip));
        return Ok(());
    };
    let start = rdtsc();
    for i in 0..syns {
        let port = 1024 + (i % 30_000) as u16;
        tcp::send_segment(st, mac, ip, port, HTTP_PORT, i as u32, 0, tcp::SYN, &[])?;
        // Take (and drop) whatever came back, so our rx ring never starves.
        st.net.reclaim_tx();
        while let Some((k, _, _)) = st.net.poll_rx() {
            st.net.recycle(k);
        }
    }
    let mut half_open = 0u32;
    for _ in 0..half {
        if let Some(mut c) = Conn::connect(st, mac, ip, next_port(), HTTP_PORT)? {
            if c.send_all(st, b"GET /latest/me")? {
                half_open += 1;
            }
        }
    }
    // One request head of `big` bytes: the server must refuse it, not buffer it.
    let mut big_status = 0u16;
    let mut big_sent = 0usize;
    if let Some(mut c) = Conn::connect(st, mac, ip, next_port(), HTTP_PORT)? {
        let mut chunk = [b'a'; tcp::MSS];
        chunk[..5].copy_from_slice(b"GET /");
        let mut left = big as usize;
        while left > 0 {
            let k = left.min(tcp::MSS);
            if !c.send_all(st, &chunk[..k])? {
                break;
            }
            chunk[..5].copy_from_slice(b"aaaaa");
            big_sent += k;
            left -= k;
        }
        c.recv_to_close(st, RESPONSE_US)?;
        big_status = parse_answer(c.received()).map_or(0, |a| a.status);
        c.close(st)?;
    }
    sprintln!(
        "PROBE net-mmds-hostile ok ip={} syns={} half_open={} big_sent={} big_status={} us={}",
        IpShow(ip),
        syns,
        half_open,
        big_sent,
        big_status,
        micros(rdtsc().wrapping_sub(start))
    );
    Ok(())
}

pub fn run(name: &str, st: &mut Stack, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    match name {
        "net-mmds-get" => get(st, arg),
        "net-mmds-token" => token(st, arg),
        "net-mmds-until" => until(st, arg),
        _ => hostile(st, arg),
    }
}
