//! MMDS V2 session tokens.
//!
//! A token is ChaCha20-Poly1305 (RustCrypto) over its expiry time, under a key drawn from
//! the host's `getrandom(2)` when the authority is made (one per VM; a restored VM gets a
//! new one, so tokens issued before a snapshot are not valid after the restore). Nothing is
//! stored per token: the guest cannot forge or extend one without the key, and any number of
//! tokens costs no memory. Nonces are a counter (unique under one key, which is all the AEAD
//! needs), so issuing a token needs no system call on the `io` thread.
//!
//! Wire form: lowercase hex of `nonce (12) || sealed expiry (8) || tag (16)`: 72 characters.

use std::time::{Duration, Instant};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};

/// Shortest and longest lifetime a guest may ask for (EC2's and Firecracker's bounds).
pub const MIN_TOKEN_TTL_SECONDS: u32 = 1;
pub const MAX_TOKEN_TTL_SECONDS: u32 = 21_600;

const NONCE_LEN: usize = 12;
const BODY_LEN: usize = 8;
const TAG_LEN: usize = 16;
const TOKEN_BYTES: usize = NONCE_LEN + BODY_LEN + TAG_LEN;
/// Length of a token as text.
pub const TOKEN_LEN: usize = 2 * TOKEN_BYTES;
/// Binds tokens to their purpose.
const AAD: &[u8] = b"xenia mmds session token v1";

/// Why no token was issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Firecracker's words.
    #[error(
        "Invalid time to live value provided for token: {0}. Please provide a value between \
         {MIN_TOKEN_TTL_SECONDS} and {MAX_TOKEN_TTL_SECONDS}."
    )]
    InvalidTtl(u32),
    #[error("cannot draw a random key for MMDS tokens: {0}")]
    Random(String),
    #[error("cannot seal the token")]
    Seal,
}

/// Issues and checks tokens for one VM.
pub struct TokenAuthority {
    cipher: ChaCha20Poly1305,
    /// Expiry times are milliseconds after this instant (a monotonic clock: the guest cannot
    /// move it, and host clock steps do not revive or kill tokens).
    epoch: Instant,
    next_nonce: u64,
}

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthority")
            .field("issued", &self.next_nonce)
            .finish_non_exhaustive()
    }
}

impl TokenAuthority {
    /// An authority with a fresh random key.
    pub fn new() -> Result<Self, TokenError> {
        let mut key = [0u8; 32];
        fill_random(&mut key)?;
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&key));
        key.fill(0);
        Ok(Self {
            cipher,
            epoch: Instant::now(),
            next_nonce: 0,
        })
    }

    /// A token valid for `ttl_seconds` from `now`.
    pub fn issue(&mut self, ttl_seconds: u32, now: Instant) -> Result<String, TokenError> {
        if !(MIN_TOKEN_TTL_SECONDS..=MAX_TOKEN_TTL_SECONDS).contains(&ttl_seconds) {
            return Err(TokenError::InvalidTtl(ttl_seconds));
        }
        let expiry = now
            .saturating_duration_since(self.epoch)
            .saturating_add(Duration::from_secs(u64::from(ttl_seconds)));
        let expiry_ms = u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX);
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&self.next_nonce.to_le_bytes());
        self.next_nonce = self.next_nonce.wrapping_add(1);
        let mut body = expiry_ms.to_le_bytes();
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), AAD, &mut body)
            .map_err(|_| TokenError::Seal)?;
        let mut raw = [0u8; TOKEN_BYTES];
        raw[..NONCE_LEN].copy_from_slice(&nonce);
        raw[NONCE_LEN..NONCE_LEN + BODY_LEN].copy_from_slice(&body);
        raw[NONCE_LEN + BODY_LEN..].copy_from_slice(tag.as_slice());
        Ok(hex(&raw))
    }

    /// Whether `token` was issued by this authority and has not expired at `now`.
    pub fn is_valid(&self, token: &str, now: Instant) -> bool {
        let Some(raw) = unhex::<TOKEN_BYTES>(token) else {
            return false;
        };
        let nonce = &raw[..NONCE_LEN];
        let mut body = [0u8; BODY_LEN];
        body.copy_from_slice(&raw[NONCE_LEN..NONCE_LEN + BODY_LEN]);
        let tag = Tag::from_slice(&raw[NONCE_LEN + BODY_LEN..]);
        if self
            .cipher
            .decrypt_in_place_detached(Nonce::from_slice(nonce), AAD, &mut body, tag)
            .is_err()
        {
            return false;
        }
        let expiry_ms = u64::from_le_bytes(body);
        let now_ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        now_ms < expiry_ms
    }
}

pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), TokenError> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`, which we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(TokenError::Random(e.to_string()));
        }
        filled += n.unsigned_abs();
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_valid_until_its_expiry() {
        let mut a = TokenAuthority::new().unwrap();
        let t0 = Instant::now();
        let token = a.issue(1, t0).unwrap();
        assert_eq!(token.len(), TOKEN_LEN);
        assert!(a.is_valid(&token, t0));
        assert!(a.is_valid(&token, t0 + Duration::from_millis(999)));
        assert!(!a.is_valid(&token, t0 + Duration::from_secs(1)));
        let long = a.issue(MAX_TOKEN_TTL_SECONDS, t0).unwrap();
        assert_ne!(long, token, "each token has its own nonce");
        assert!(a.is_valid(&long, t0 + Duration::from_secs(21_599)));
    }

    #[test]
    fn ttl_bounds_are_firecrackers() {
        let mut a = TokenAuthority::new().unwrap();
        let now = Instant::now();
        for bad in [0, MAX_TOKEN_TTL_SECONDS + 1, u32::MAX] {
            let e = a.issue(bad, now).unwrap_err();
            assert_eq!(e, TokenError::InvalidTtl(bad));
        }
        assert_eq!(
            TokenError::InvalidTtl(0).to_string(),
            "Invalid time to live value provided for token: 0. Please provide a value between 1 \
             and 21600."
        );
    }

    #[test]
    fn forged_tampered_and_foreign_tokens_are_refused() {
        let mut a = TokenAuthority::new().unwrap();
        let b = TokenAuthority::new().unwrap();
        let now = Instant::now();
        let token = a.issue(60, now).unwrap();
        assert!(!b.is_valid(&token, now), "another VM's key");
        // Flip each nibble of the sealed expiry and the tag in turn.
        for i in 2 * NONCE_LEN..TOKEN_LEN {
            let mut t = token.clone().into_bytes();
            t[i] = if t[i] == b'0' { b'1' } else { b'0' };
            let t = String::from_utf8(t).unwrap();
            assert!(!a.is_valid(&t, now), "nibble {i}");
        }
        for junk in [
            "",
            "abc",
            &"z".repeat(TOKEN_LEN),
            &"0".repeat(TOKEN_LEN),
            &token[1..],
        ] {
            assert!(!a.is_valid(junk, now), "{junk}");
        }
        assert!(a.is_valid(&token.to_uppercase(), now), "hex is case-blind");
    }
}
