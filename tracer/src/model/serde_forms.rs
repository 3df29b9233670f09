//! How some values appear in JSON lines and captures, where their Rust form is not what
//! a reader wants: wall-clock times in RFC 3339, IP families as 4 or 6, durations rounded
//! to milliseconds, name/value lists as objects.

/// Nanoseconds since the Unix epoch ↔ RFC 3339 with nanoseconds, UTC.
pub mod wall_time {
    use std::time::{Duration, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(wall_ns: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(*wall_ns)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let text = String::deserialize(deserializer)?;
        let time = humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)?;
        let since = time.duration_since(UNIX_EPOCH).map_err(serde::de::Error::custom)?;
        u64::try_from(since.as_nanos()).map_err(serde::de::Error::custom)
    }
}

/// `Family` ↔ the IP version number, 4 or 6.
pub mod ip_version {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::model::hook::Family;

    pub fn serialize<S: Serializer>(family: &Family, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(match family {
            Family::Ipv4 => 4,
            Family::Ipv6 => 6,
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Family, D::Error> {
        match u8::deserialize(deserializer)? {
            4 => Ok(Family::Ipv4),
            6 => Ok(Family::Ipv6),
            other => Err(serde::de::Error::custom(format!("IP version {other}"))),
        }
    }
}

/// Seconds, rounded to milliseconds.
pub mod millis {
    use serde::Serializer;

    pub fn serialize<S: Serializer>(secs: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64((secs * 1000.0).round() / 1000.0)
    }
}

/// A field that is always null, kept so lines of one type have the same fields.
pub fn null<S: serde::Serializer>(_: &(), serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_none()
}
