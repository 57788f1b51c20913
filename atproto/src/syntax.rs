//! Identifier syntax: DID, handle, NSID, TID, record key, AT-URI, datetime, CID, language
//! and generic URI, as the atproto specs define them.
//!
//! Every check is a plain function over `&str` that returns `Result<(), SyntaxError>`; the
//! error says which rule failed. The hot ones (DID, NSID, TID, record key) are hand-written
//! byte loops because the relay and indexer run them on every event.

use std::fmt;

use thiserror::Error;

/// Which identifier kind a string failed to parse as, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {kind}: {reason}")]
pub struct SyntaxError {
    /// The identifier kind, e.g. `"DID"`.
    pub kind: &'static str,
    /// The first rule the input broke.
    pub reason: &'static str,
}

fn fail(kind: &'static str, reason: &'static str) -> Result<(), SyntaxError> {
    Err(SyntaxError { kind, reason })
}

/// Longest DID accepted (the spec's 2 KiB bound).
pub const MAX_DID_LEN: usize = 2048;
/// Longest handle accepted.
pub const MAX_HANDLE_LEN: usize = 253;
/// Longest NSID accepted (253 for the domain authority, 1 dot, 63 for the name).
pub const MAX_NSID_LEN: usize = 317;
/// Longest record key accepted.
pub const MAX_RECORD_KEY_LEN: usize = 512;
/// Longest AT-URI and generic URI accepted.
pub const MAX_URI_LEN: usize = 8192;

/// `did:<method>:<identifier>`: lowercase method, identifier of `[a-zA-Z0-9._:%-]` that
/// does not end in `:` or `%`.
pub fn validate_did(s: &str) -> Result<(), SyntaxError> {
    const K: &str = "DID";
    if s.len() > MAX_DID_LEN {
        return fail(K, "longer than 2048 characters");
    }
    let Some(rest) = s.strip_prefix("did:") else {
        return fail(K, "must start with \"did:\"");
    };
    let Some((method, ident)) = rest.split_once(':') else {
        return fail(K, "needs a method and an identifier");
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_lowercase()) {
        return fail(K, "method must be lowercase letters");
    }
    if ident.is_empty() {
        return fail(K, "empty identifier");
    }
    if !ident
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'%' | b'-'))
    {
        return fail(K, "identifier has a character outside [a-zA-Z0-9._:%-]");
    }
    if ident.ends_with(':') || ident.ends_with('%') {
        return fail(K, "identifier ends with ':' or '%'");
    }
    Ok(())
}

/// A DNS name of at least two labels whose last label does not start with a digit.
pub fn validate_handle(s: &str) -> Result<(), SyntaxError> {
    const K: &str = "handle";
    if s.len() > MAX_HANDLE_LEN {
        return fail(K, "longer than 253 characters");
    }
    let labels: Vec<&str> = s.split('.').collect();
    if labels.len() < 2 {
        return fail(K, "needs at least two labels");
    }
    for label in &labels {
        check_dns_label(label).or_else(|reason| fail(K, reason))?;
    }
    if labels[labels.len() - 1].as_bytes()[0].is_ascii_digit() {
        return fail(K, "top-level label starts with a digit");
    }
    Ok(())
}

fn check_dns_label(label: &str) -> Result<(), &'static str> {
    let b = label.as_bytes();
    if b.is_empty() || b.len() > 63 {
        return Err("label must be 1 to 63 characters");
    }
    if !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
        return Err("label has a character outside [a-zA-Z0-9-]");
    }
    if b[0] == b'-' || b[b.len() - 1] == b'-' {
        return Err("label starts or ends with '-'");
    }
    Ok(())
}

/// A DID or a handle.
pub fn validate_at_identifier(s: &str) -> Result<(), SyntaxError> {
    if s.starts_with("did:") {
        validate_did(s)
    } else {
        validate_handle(s)
    }
}

/// Reversed domain authority plus a name: `com.example.fooBar`.
pub fn validate_nsid(s: &str) -> Result<(), SyntaxError> {
    const K: &str = "NSID";
    if s.len() > MAX_NSID_LEN {
        return fail(K, "longer than 317 characters");
    }
    let segments: Vec<&str> = s.split('.').collect();
    if segments.len() < 3 {
        return fail(K, "needs at least three segments");
    }
    let (name, authority) = segments.split_last().expect("three segments");
    for seg in authority {
        check_dns_label(seg).or_else(|reason| fail(K, reason))?;
    }
    if authority[0].as_bytes()[0].is_ascii_digit() {
        return fail(K, "first segment starts with a digit");
    }
    let n = name.as_bytes();
    if n.is_empty() || n.len() > 63 {
        return fail(K, "name must be 1 to 63 characters");
    }
    if !n[0].is_ascii_alphabetic() || !n.iter().all(u8::is_ascii_alphanumeric) {
        return fail(K, "name must be letters and digits, starting with a letter");
    }
    Ok(())
}

const TID_ALPHABET: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";

/// Thirteen base32-sortable characters, the first in `[2-7a-j]` (top bit clear).
pub fn validate_tid(s: &str) -> Result<(), SyntaxError> {
    const K: &str = "TID";
    let b = s.as_bytes();
    if b.len() != 13 {
        return fail(K, "must be 13 characters");
    }
    if !b.iter().all(|c| TID_ALPHABET.contains(c)) {
        return fail(K, "character outside the base32-sortable alphabet");
    }
    if !matches!(b[0], b'2'..=b'7' | b'a'..=b'j') {
        return fail(K, "first character sets the high bit");
    }
    Ok(())
}

/// 1 to 512 characters of `[a-zA-Z0-9_~.:-]`, and neither `.` nor `..`.
pub fn validate_record_key(s: &str) -> Result<(), SyntaxError> {
    const K: &str = "record key";
    if s.is_empty() || s.len() > MAX_RECORD_KEY_LEN {
        return fail(K, "must be 1 to 512 characters");
    }
    if s == "." || s == ".." {
        return fail(K, "may not be '.' or '..'");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'~' | b'.' | b':' | b'-'))
    {
        return fail(K, "character outside [a-zA-Z0-9_~.:-]");
    }
    Ok(())
}

/// The parts of a valid `at://authority[/collection[/rkey]]` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtUri<'a> {
    /// A DID or handle.
    pub authority: &'a str,
    /// The collection NSID, when present.
    pub collection: Option<&'a str>,
    /// The record key, when present.
    pub rkey: Option<&'a str>,
}

impl fmt::Display for AtUri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at://{}", self.authority)?;
        if let Some(c) = self.collection {
            write!(f, "/{c}")?;
        }
        if let Some(r) = self.rkey {
            write!(f, "/{r}")?;
        }
        Ok(())
    }
}

/// Parses the restricted AT-URI form used for records: authority, collection, record key.
pub fn parse_at_uri(s: &str) -> Result<AtUri<'_>, SyntaxError> {
    const K: &str = "AT-URI";
    if s.len() > MAX_URI_LEN {
        return Err(SyntaxError {
            kind: K,
            reason: "longer than 8 KiB",
        });
    }
    let Some(rest) = s.strip_prefix("at://") else {
        return Err(SyntaxError {
            kind: K,
            reason: "must start with \"at://\"",
        });
    };
    let mut parts = rest.split('/');
    let authority = parts.next().unwrap_or_default();
    validate_at_identifier(authority).map_err(|_| SyntaxError {
        kind: K,
        reason: "authority is not a DID or handle",
    })?;
    let collection = parts.next();
    if let Some(c) = collection {
        validate_nsid(c).map_err(|_| SyntaxError {
            kind: K,
            reason: "collection is not an NSID",
        })?;
    }
    let rkey = parts.next();
    if let Some(r) = rkey {
        validate_record_key(r).map_err(|_| SyntaxError {
            kind: K,
            reason: "record key is not valid",
        })?;
    }
    if parts.next().is_some() {
        return Err(SyntaxError {
            kind: K,
            reason: "too many path segments",
        });
    }
    Ok(AtUri {
        authority,
        collection,
        rkey,
    })
}

/// See [`parse_at_uri`].
pub fn validate_at_uri(s: &str) -> Result<(), SyntaxError> {
    parse_at_uri(s).map(|_| ())
}

/// RFC 3339 with the atproto restrictions: uppercase `T` and `Z`, seconds required, a
/// timezone required (`-00:00` refused), and a real calendar date and time.
pub fn validate_datetime(s: &str) -> Result<(), SyntaxError> {
    const K: &str = "datetime";
    let b = s.as_bytes();
    if b.len() < 20 || b.len() > 64 {
        return fail(K, "wrong length");
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        digits(0..4),
        digits(5..7),
        digits(8..10),
        digits(11..13),
        digits(14..16),
        digits(17..19),
    ) else {
        return fail(K, "expected digits in YYYY-MM-DDTHH:MM:SS");
    };
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return fail(K, "expected YYYY-MM-DDTHH:MM:SS");
    }
    let mut i = 19;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || i - start > 20 {
            return fail(K, "fraction must be 1 to 20 digits");
        }
    }
    let offset_minutes: i64 = match &b[i..] {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hm = [h1, h2, m1, m2];
            if !hm.iter().all(|c| c.is_ascii_digit()) {
                return fail(K, "bad timezone offset");
            }
            let h = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
            let m = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            if h > 23 || m > 59 {
                return fail(K, "timezone offset out of range");
            }
            if *sign == b'-' && h == 0 && m == 0 {
                return fail(K, "\"-00:00\" is not allowed");
            }
            if *sign == b'-' {
                -(h * 60 + m)
            } else {
                h * 60 + m
            }
        }
        _ => return fail(K, "timezone must be 'Z' or ±HH:MM"),
    };
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return fail(K, "not a calendar date");
    }
    if hour > 23 || minute > 59 || second > 60 {
        return fail(K, "not a time of day");
    }
    // The instant, in minutes since 0000-01-01T00:00Z, may not fall before year zero.
    let days_before_year = i64::from(year) * 365 + i64::from(year.div_ceil(4))
        - i64::from(year.div_ceil(100))
        + i64::from(year.div_ceil(400));
    let days_before_month: i64 = (1..month).map(|m| i64::from(days_in_month(year, m))).sum();
    let minutes = (days_before_year + days_before_month + i64::from(day) - 1) * 1440
        + i64::from(hour) * 60
        + i64::from(minute);
    if minutes - offset_minutes < 0 {
        return fail(K, "before year zero");
    }
    Ok(())
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    }
}

/// A CID in string form, as far as syntax goes: 8 to 256 characters of `[a-zA-Z0-9+=]`,
/// and not a CIDv0 (`Qm…`). Use `cid::Cid::try_from` where the CID must also decode.
pub fn validate_cid(s: &str) -> Result<(), SyntaxError> {
    const K: &str = "CID";
    if s.len() < 8 || s.len() > 256 {
        return fail(K, "must be 8 to 256 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'=')
    {
        return fail(K, "character outside [a-zA-Z0-9+=]");
    }
    if s.starts_with("Qmb") {
        return fail(K, "CIDv0 is not allowed");
    }
    Ok(())
}

/// A BCP-47 language tag: a 2-3 letter primary language (or `i`/`x` forms) and subtags of
/// letters and digits, with no variant or extension singleton repeated.
pub fn validate_language(s: &str) -> Result<(), SyntaxError> {
    const K: &str = "language";
    let mut subtags = s.split('-');
    let first = subtags.next().unwrap_or_default();
    let private = first.eq_ignore_ascii_case("x");
    if !(first == "i"
        || private
        || ((2..=3).contains(&first.len()) && first.bytes().all(|b| b.is_ascii_lowercase())))
    {
        return fail(K, "primary language must be 2 or 3 lowercase letters");
    }
    let rest: Vec<&str> = subtags.collect();
    if (first == "i" || private) && rest.is_empty() {
        return fail(K, "singleton without a subtag");
    }
    if rest
        .iter()
        .any(|t| t.is_empty() || t.len() > 8 || !t.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        return fail(K, "subtags must be 1 to 8 letters or digits");
    }
    if private {
        return Ok(());
    }
    let mut variants: Vec<String> = Vec::new();
    let mut singletons: Vec<u8> = Vec::new();
    let mut in_extension = false;
    for t in rest {
        if t.len() == 1 {
            let single = t.as_bytes()[0].to_ascii_lowercase();
            if single == b'x' {
                break;
            }
            if singletons.contains(&single) {
                return fail(K, "repeated extension singleton");
            }
            singletons.push(single);
            in_extension = true;
        } else if !in_extension
            && (t.len() >= 5 || (t.len() == 4 && t.as_bytes()[0].is_ascii_digit()))
        {
            let lower = t.to_ascii_lowercase();
            if variants.contains(&lower) {
                return fail(K, "repeated variant");
            }
            variants.push(lower);
        }
    }
    if s.ends_with('-') {
        return fail(K, "trailing '-'");
    }
    Ok(())
}

/// A generic URI: a scheme, then something with no whitespace.
pub fn validate_uri(s: &str) -> Result<(), SyntaxError> {
    const K: &str = "URI";
    if s.len() > MAX_URI_LEN {
        return fail(K, "longer than 8 KiB");
    }
    let Some((scheme, rest)) = s.split_once(':') else {
        return fail(K, "no scheme");
    };
    let sb = scheme.as_bytes();
    if sb.is_empty()
        || !sb[0].is_ascii_alphabetic()
        || !sb
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
    {
        return fail(K, "bad scheme");
    }
    if rest.is_empty() || rest.bytes().any(|c| c.is_ascii_whitespace()) {
        return fail(K, "empty or contains whitespace");
    }
    if let Some(hier) = rest.strip_prefix("//") {
        if hier.is_empty() {
            return fail(K, "empty authority");
        }
    }
    Ok(())
}

/// The current UTC time as an atproto datetime with milliseconds
/// (`2026-11-24T08:00:00.000Z`).
pub fn datetime_now() -> String {
    datetime_from_millis(now_millis())
}

/// Milliseconds since the Unix epoch, now (0 if the clock is before it).
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch as an atproto datetime (UTC, millisecond precision).
pub fn datetime_from_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

/// An atproto datetime as milliseconds since the Unix epoch, honouring its offset; `None`
/// if it is not a valid datetime.
pub fn datetime_to_millis(s: &str) -> Option<i64> {
    validate_datetime(s).ok()?;
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        std::str::from_utf8(b.get(r)?).ok()?.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    let mut frac_ms = 0;
    if let Some(f) = rest.strip_prefix('.') {
        let digits = f.bytes().take_while(u8::is_ascii_digit).count();
        let mut ms = 0i64;
        for (i, c) in f[..digits].bytes().take(3).enumerate() {
            ms += i64::from(c - b'0') * [100, 10, 1][i];
        }
        frac_ms = ms;
        rest = &f[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let oh: i64 = o.get(1..3)?.parse().ok()?;
            let om: i64 = o.get(4..6)?.parse().ok()?;
            sign * (oh * 60 + om)
        }
    };
    // Days from civil (Howard Hinnant), then seconds.
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60) * 1000 + frac_ms)
}

/// A timestamp identifier: 53 bits of microseconds since the Unix epoch and a 10-bit
/// clock id, encoded base32-sortable. Used for commit revisions and record keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tid(u64);

impl Tid {
    /// Builds a TID from microseconds since the epoch and a clock id (low 10 bits kept).
    pub fn new(micros: u64, clock_id: u16) -> Self {
        Tid(((micros & ((1 << 53) - 1)) << 10) | u64::from(clock_id & 0x3ff))
    }

    /// The TID with this 64-bit integer value.
    pub fn from_u64(value: u64) -> Self {
        Tid(value & !(1 << 63))
    }

    /// The TID as its 64-bit integer (orders like the string form).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// Microseconds since the Unix epoch.
    pub fn micros(self) -> u64 {
        self.0 >> 10
    }

    /// Parses a TID string.
    pub fn parse(s: &str) -> Result<Self, SyntaxError> {
        validate_tid(s)?;
        let v = s.bytes().fold(0u64, |acc, c| {
            let idx = TID_ALPHABET.iter().position(|a| *a == c).unwrap_or(0) as u64;
            (acc << 5) | idx
        });
        Ok(Tid(v))
    }
}

impl fmt::Display for Tid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 13];
        for (i, slot) in out.iter_mut().enumerate() {
            let shift = 5 * (12 - i);
            *slot = TID_ALPHABET[((self.0 >> shift) & 31) as usize];
        }
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

/// Hands out strictly increasing TIDs from the wall clock, one clock per owner (a repo
/// writer or a load generator), never a global.
#[derive(Debug)]
pub struct TidClock {
    last: u64,
    clock_id: u16,
}

impl TidClock {
    /// A clock with the given id (low 10 bits kept).
    pub fn new(clock_id: u16) -> Self {
        TidClock {
            last: 0,
            clock_id: clock_id & 0x3ff,
        }
    }

    /// The next TID: the current time in microseconds, bumped past the last one issued.
    pub fn next_tid(&mut self) -> Tid {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        self.last = now.max(self.last + 1);
        Tid::new(self.last, self.clock_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_millis_round_trip_and_offsets() {
        assert_eq!(datetime_to_millis("1970-01-01T00:00:01.000Z"), Some(1000));
        assert_eq!(
            datetime_to_millis("2026-11-24T08:00:00.250Z"),
            Some(1_795_507_200_250)
        );
        assert_eq!(
            datetime_to_millis("2026-11-24T10:00:00+02:00"),
            datetime_to_millis("2026-11-24T08:00:00Z")
        );
        assert_eq!(datetime_to_millis("garbage"), None);
        for ms in [0, 951_782_400_123, 1_795_507_200_250, 4_102_444_800_000] {
            let s = datetime_from_millis(ms);
            assert_eq!(datetime_to_millis(&s), Some(ms), "{s}");
        }
    }

    #[test]
    fn tid_round_trips_and_orders() {
        let mut clock = TidClock::new(7);
        let a = clock.next_tid();
        let b = clock.next_tid();
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
        assert_eq!(Tid::parse(&a.to_string()), Ok(a));
        validate_tid(&a.to_string()).expect("generated TIDs are valid");
    }

    #[test]
    fn now_is_a_valid_datetime() {
        let t = datetime_now();
        validate_datetime(&t).expect("valid");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }

    #[test]
    fn at_uri_parts() {
        let u = parse_at_uri("at://did:plc:abc/agent.comms.message/3kznmn7xqxl22").expect("valid");
        assert_eq!(u.collection, Some("agent.comms.message"));
        assert_eq!(u.rkey, Some("3kznmn7xqxl22"));
        assert_eq!(
            u.to_string(),
            "at://did:plc:abc/agent.comms.message/3kznmn7xqxl22"
        );
    }
}
