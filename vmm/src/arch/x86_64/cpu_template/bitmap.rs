//! Template bitmaps: `0b` then up to 64 of `0`, `1` and `x` (leave as is), least significant
//! bit last, `_` allowed as a separator (Firecracker's notation).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::TemplateError;

/// Bits to force: those in `mask` take their value from `value`; the others are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bitmap {
    pub mask: u64,
    pub value: u64,
}

impl Bitmap {
    /// Parses `0b[01x_]+` with at most `width` digits.
    pub fn parse(text: &str, width: u32) -> Result<Bitmap, TemplateError> {
        let bad = |reason: &str| TemplateError::BadBitmap {
            bitmap: text.to_owned(),
            reason: reason.to_owned(),
        };
        let digits = text
            .strip_prefix("0b")
            .ok_or_else(|| bad("must start with 0b"))?;
        let mut mask = 0u64;
        let mut value = 0u64;
        let mut count = 0u32;
        for c in digits.chars().filter(|c| *c != '_') {
            if count == width {
                return Err(bad(&format!("more than {width} bits")));
            }
            mask <<= 1;
            value <<= 1;
            match c {
                '0' => mask |= 1,
                '1' => {
                    mask |= 1;
                    value |= 1;
                }
                'x' | 'X' => {}
                _ => return Err(bad(&format!("`{c}` is not 0, 1, x or _"))),
            }
            count += 1;
        }
        if count == 0 {
            return Err(bad("has no bits"));
        }
        Ok(Bitmap { mask, value })
    }

    /// `width` digits, `x` where the bit is left alone.
    pub fn format(&self, width: u32) -> String {
        let mut out = String::with_capacity(width as usize + 2);
        out.push_str("0b");
        for bit in (0..width).rev() {
            let b = 1u64 << bit;
            out.push(match (self.mask & b != 0, self.value & b != 0) {
                (false, _) => 'x',
                (true, false) => '0',
                (true, true) => '1',
            });
        }
        out
    }
}

/// CPUID registers are 32 bits wide.
const CPUID_WIDTH: u32 = 32;

impl Serialize for Bitmap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.format(CPUID_WIDTH))
    }
}

impl<'de> Deserialize<'de> for Bitmap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Bitmap::parse(&text, CPUID_WIDTH).map_err(serde::de::Error::custom)
    }
}
