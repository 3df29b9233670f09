//! How some values appear in JSON lines and captures, where their Rust form is not what
//! a reader wants: wall-clock times in RFC 3339, IP families as 4 or 6, durations rounded
//! to milliseconds, name/value lists as objects.

/// Nanoseconds since the Unix epoch ↔ RFC 3339 with nanoseconds, UTC.
pub(crate) mod wall_time {
    use std::time::{Duration, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(wall_ns: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(*wall_ns)))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let text = String::deserialize(deserializer)?;
        let time = humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)?;
        let since = time.duration_since(UNIX_EPOCH).map_err(serde::de::Error::custom)?;
        u64::try_from(since.as_nanos()).map_err(serde::de::Error::custom)
    }
}

/// `Family` ↔ the IP version number, 4 or 6.
pub(crate) mod ip_version {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::model::hook::Family;

    pub(crate) fn serialize<S: Serializer>(family: &Family, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(match family {
            Family::Ipv4 => 4,
            Family::Ipv6 => 6,
        })
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Family, D::Error> {
        match u8::deserialize(deserializer)? {
            4 => Ok(Family::Ipv4),
            6 => Ok(Family::Ipv6),
            other => Err(serde::de::Error::custom(format!("IP version {other}"))),
        }
    }
}

/// Seconds, rounded to milliseconds.
pub(crate) mod millis {
    use serde::Serializer;

    pub(crate) fn serialize<S: Serializer>(secs: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64((secs * 1000.0).round() / 1000.0)
    }
}

/// A field that is always null, kept so lines of one type have the same fields.
pub(crate) fn null<S: serde::Serializer>(_: &(), serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_none()
}

/// A socket address as `10.244.0.5:53` or `[fd00::5]:53`, as its `Display` writes it; IPv4
/// (nearly every line) written digit by digit into a stack buffer: through `Display`, the
/// formatter's padding and the per-fragment escaping took a third of the reader's time under load.
pub(crate) mod socket_addr {
    use std::io::Write;
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    /// `[` + 39 + `%` + 10 + `]:` + 5 characters is the longest an IPv6 socket address gets.
    pub(crate) const LONGEST: usize = 64;

    pub(crate) fn serialize<S: Serializer>(addr: &SocketAddr, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; LONGEST];
        serializer.serialize_str(text(addr, &mut buf))
    }

    /// `addr` as its `Display` writes it, in `buf`.
    pub(crate) fn text<'a>(addr: &SocketAddr, buf: &'a mut [u8; LONGEST]) -> &'a str {
        let len = match addr {
            SocketAddr::V4(v4) => {
                let mut len = 0;
                for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                    if i > 0 {
                        buf[len] = b'.';
                        len += 1;
                    }
                    len += write_decimal(&mut buf[len..], u32::from(octet));
                }
                buf[len] = b':';
                len + 1 + write_decimal(&mut buf[len + 1..], u32::from(v4.port()))
            }
            SocketAddr::V6(_) => {
                let mut cursor = &mut buf[..];
                // Cannot fail: LONGEST holds the longest form.
                let _ = write!(cursor, "{addr}");
                LONGEST - cursor.len()
            }
        };
        // ASCII digits and punctuation only, so never the empty fallback.
        std::str::from_utf8(&buf[..len]).unwrap_or_default()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
        SocketAddr::deserialize(deserializer)
    }

    /// `n` in decimal at the start of `out` (which has room for five digits); the digits written.
    fn write_decimal(out: &mut [u8], n: u32) -> usize {
        let mut digits = [0u8; 5];
        let mut count = 0;
        let mut rest = n;
        loop {
            digits[count] = b'0' + (rest % 10) as u8;
            count += 1;
            rest /= 10;
            if rest == 0 || count == digits.len() {
                break;
            }
        }
        for (i, digit) in digits[..count].iter().rev().enumerate() {
            out[i] = *digit;
        }
        count
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn written_as_display_writes_it() {
            for text in [
                "10.244.0.5:53",
                "0.0.0.0:0",
                "255.255.255.255:65535",
                "192.0.2.10:7",
                "[fd00:10:244::7]:53",
                "[::1]:65535",
            ] {
                let addr: SocketAddr = text.parse().unwrap();
                let json = serialize(&addr, serde_json::value::Serializer).unwrap();
                assert_eq!(json, serde_json::Value::String(addr.to_string()), "{text}");
                assert_eq!(deserialize(json).unwrap(), addr);
            }
        }
    }
}
