//! Durations and sizes as flags and config files write them (`1h30m`,
//! `4MiB`): their parsers and the canonical form they print back. Separate
//! because they are self-contained and shared with the `asyncgate` CLI.

use std::time::Duration;

/// The forms a duration accepts, for error messages and help.
pub const DURATION_FORMS: &str = "a number and a unit, ms, s, m, h or d (also us, ns), with no space, a fraction allowed, parts added up: e.g. 500ms, 1.5s, 2m, 1h30m, 7d";

/// Reads a duration in the one canonical form, the way the gateway prints
/// them: one or more `NUMBER UNIT` parts with no space, units `ns`, `us`,
/// `ms`, `s`, `m` (minutes), `h`, `d`, a decimal fraction allowed
/// (`1.5s`), parts added up (`1h30m`). A unit is required: a bare `10`
/// could mean seconds or milliseconds. humantime's lenient spellings
/// (`5 seconds`, `1min`, `2days`, and `1M`, which it reads as a *month*)
/// are refused rather than guessed at.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_canonical_duration(text.trim())
        .ok_or_else(|| format!("{:?} is not a duration; use {DURATION_FORMS}", text.trim()))
}

fn parse_canonical_duration(text: &str) -> Option<Duration> {
    const UNITS: [(&str, u128); 7] = [
        ("ns", 1),
        ("us", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
        ("d", 86_400_000_000_000),
    ];
    if text.is_empty() {
        return None;
    }
    let mut rest = text;
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let factor = UNITS.iter().find(|(name, _)| *name == unit)?.1;
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() || (number.contains('.') && fraction.is_empty()) {
            return None;
        }
        if !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let whole: u128 = whole.parse().ok()?;
        // Fraction digits past nanoseconds are dropped (at most 18 kept,
        // so the arithmetic cannot overflow).
        let kept = &fraction[..fraction.len().min(18)];
        let scale = 10u128.pow(kept.len() as u32);
        let fraction: u128 = if kept.is_empty() {
            0
        } else {
            kept.parse().ok()?
        };
        nanos = nanos
            .checked_add(whole.checked_mul(factor)?)?
            .checked_add(fraction * factor / scale)?;
        rest = tail;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// The forms a size accepts, for error messages and help.
pub const SIZE_FORMS: &str = "bytes (4194304) or a number and a unit: KiB, MiB, GiB, TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000), e.g. 4MiB, \"64 KiB\", 1.5GiB";

/// Reads a size in bytes: a plain integer is bytes; a number with a unit
/// is scaled by it, with `bytesize`'s rules: binary units (`KiB`, `MiB`,
/// `GiB`, `TiB`; also `Ki`, `Mi`, ...) are powers of 1024, decimal ones
/// (`KB`, `MB`, `GB`, `TB`; also `K`, `M`, ...) powers of 1000, any case,
/// a space allowed before the unit, a fraction allowed (rounded down to
/// whole bytes). So `4MiB` is 4,194,304 bytes and `4MB` 4,000,000.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    // bytesize saturates a product past u64::MAX; a size that large is a
    // typo, not a request for "unlimited".
    match text.parse::<bytesize::ByteSize>() {
        Ok(size) if size.0 < u64::MAX && !text.starts_with(['-', '+']) => Ok(size.0),
        _ => Err(format!("{text:?} is not a size; use {SIZE_FORMS}")),
    }
}

/// [`parse_size`] for a size held in a `usize`.
pub fn parse_size_usize(text: &str) -> Result<usize, String> {
    let size = parse_size(text)?;
    usize::try_from(size).map_err(|_| format!("{text:?} is too large for this machine"))
}

/// A size as [`parse_size`] reads it back exactly: in the largest binary
/// unit that divides it (`4MiB`), else in bytes.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    UNITS
        .iter()
        .find(|(factor, _)| bytes != 0 && bytes.is_multiple_of(*factor))
        .map_or_else(
            || bytes.to_string(),
            |(factor, unit)| format!("{}{unit}", bytes / factor),
        )
}
