//! Kernel command-line parsing: `probe.cmds=c1,c2:arg,...`.

/// Value of the first `key=value` word whose key is `key`.
pub fn param<'a>(cmdline: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    cmdline
        .split(|&b| b == b' ' || b == b'\t' || b == b'\n')
        .find_map(|word| {
            let eq = word.iter().position(|&b| b == b'=')?;
            (&word[..eq] == key).then(|| &word[eq + 1..])
        })
}

/// One command from `probe.cmds`: name and optional argument after ':'.
#[derive(Clone, Copy, Debug)]
pub struct Command<'a> {
    pub name: &'a [u8],
    pub arg: Option<&'a [u8]>,
}

/// The commands listed in `probe.cmds=`, in order.
pub fn commands(cmdline: &[u8]) -> impl Iterator<Item = Command<'_>> {
    param(cmdline, b"probe.cmds")
        .unwrap_or(&[])
        .split(|&b| b == b',')
        .filter(|c| !c.is_empty())
        .map(|c| match c.iter().position(|&b| b == b':') {
            Some(i) => Command {
                name: &c[..i],
                arg: Some(&c[i + 1..]),
            },
            None => Command { name: c, arg: None },
        })
}

/// Parses a decimal or 0x-prefixed hexadecimal number (no overflow).
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in digits {
        let d = (b as char).to_digit(radix)? as u64;
        v = v.checked_mul(radix as u64)?.checked_add(d)?;
    }
    Some(v)
}

/// Text that is safe to print inside one console line.
pub fn as_text(bytes: &[u8]) -> &str {
    match core::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
    }
}
