//! HTTP-dates (RFC 9110 §5.6.7), read and written with the `httpdate`
//! crate.
//!
//! ringgate writes only the preferred IMF-fixdate
//! (`Sun, 06 Nov 1994 08:49:37 GMT`) and reads the three forms RFC 9110
//! tells a recipient to accept: IMF-fixdate, the obsolete RFC 850 form
//! (`Sunday, 06-Nov-94 08:49:37 GMT`, two-digit years read as 1970-2069)
//! and ANSI C's asctime form (`Sun Nov  6 08:49:37 1994`). A date before
//! 1970, or whose weekday does not fall on its day, is not a date.
//!
//! Performance notes: parsing allocates nothing (only `Expires` and
//! `Date` of responses a cached route stores are parsed, and the `sunset`
//! key at config time); formatting allocates its string.

use std::time::{Duration, UNIX_EPOCH};

/// Seconds since the Unix epoch of an HTTP-date in any of the three forms,
/// surrounding whitespace allowed; `None` when `v` is not one.
pub fn parse(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?;
    let t = httpdate::parse_http_date(s.trim()).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// `unix_secs` as an IMF-fixdate.
pub fn format(unix_secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(unix_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imf_fixdate() {
        assert_eq!(parse(b"Sun, 06 Nov 1994 08:49:37 GMT"), Some(784111777));
        assert_eq!(parse(b"Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse(b"  Sat, 31 Jan 2032 23:59:59 GMT "), Some(1959206399));
        assert_eq!(format(784111777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(format(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    /// The obsolete forms RFC 9110 §5.6.7 tells recipients to accept.
    #[test]
    fn obsolete_rfc850_and_asctime_forms() {
        assert_eq!(parse(b"Sunday, 06-Nov-94 08:49:37 GMT"), Some(784111777));
        assert_eq!(parse(b"Sun Nov  6 08:49:37 1994"), Some(784111777));
        // Two-digit years name 1970-2069.
        assert_eq!(
            parse(b"Saturday, 31-Jan-32 23:59:59 GMT"),
            parse(b"Sat, 31 Jan 2032 23:59:59 GMT")
        );
        assert_eq!(parse(b"Thursday, 01-Jan-70 00:00:00 GMT"), Some(0));
    }

    #[test]
    fn not_dates() {
        for bad in [
            &b"0"[..],
            b"",
            b"2027-01-31",
            b"Sat, 31 Jan 2027 24:59:59 GMT",
            b"Sat, 31 Foo 2027 23:59:59 GMT",
            b"Sun, 32 Jan 2027 23:59:59 GMT",
            // The weekday does not fall on the day (31 Jan 2027 is a Sunday).
            b"Sat, 31 Jan 2027 23:59:59 GMT",
            b"Wed, 31 Dec 1969 23:59:59 GMT",
            b"Sun, 06 Nov 1994 08:49:37 UTC",
            b"Sun, 06 Nov 1994 08:49:37 GMT\xff",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse(b"Sun, 31 Jan 2027 23:59:59 GMT").is_some());
    }
}
