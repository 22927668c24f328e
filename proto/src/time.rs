//! [`Timestamp`]: a point in time, nanoseconds since the Unix epoch (UTC).
//!
//! RFC 3339 with nanoseconds in human-readable formats, an i64 in binary ones.
//!
//! [`parse_duration`] and [`format_duration`]: spans of time as people write them (`90s`,
//! `1h 30m`, `2192days`), for configuration files and command lines alike.
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Parses a span of time in jiff's friendly format (`60s`, `5m`, `1h 30m`, `2192days`, days of
/// 24 hours) or ISO 8601 (`PT1H`). Months, years and negative spans are refused.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let span: jiff::Span = text.trim().parse().map_err(|err| format!("{err}"))?;
    let signed = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|err| format!("{err}"))?;
    std::time::Duration::try_from(signed).map_err(|_| "a duration cannot be negative".into())
}

/// Whole seconds as people read them: `1d 2h 3m 4s`, `45s`.
pub fn format_duration(seconds: u64) -> String {
    let round = jiff::SpanRound::new()
        .largest(jiff::Unit::Day)
        .days_are_24_hours();
    let span = i64::try_from(seconds)
        .map_err(|_| ())
        .and_then(|s| jiff::Span::new().try_seconds(s).map_err(|_| ()));
    match span.and_then(|span| span.round(round).map_err(|_| ())) {
        Ok(span) => format!("{span:#}"),
        Err(_) => format!("{seconds}s"),
    }
}

#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn from_nanos(nanos: i64) -> Self {
        Self(nanos)
    }

    pub fn as_nanos(self) -> i64 {
        self.0
    }

    pub fn now() -> Self {
        Self::from(jiff::Timestamp::now())
    }

    pub fn to_jiff(self) -> jiff::Timestamp {
        jiff::Timestamp::from_nanosecond(i128::from(self.0)).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }

    /// Seconds (with fraction) from `earlier` to `self`.
    pub fn seconds_since(self, earlier: Timestamp) -> f64 {
        (self.0 - earlier.0) as f64 / 1e9
    }
}

impl From<jiff::Timestamp> for Timestamp {
    fn from(value: jiff::Timestamp) -> Self {
        Self(
            value
                .as_nanosecond()
                .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_jiff())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_jiff())
    }
}

impl std::str::FromStr for Timestamp {
    type Err = jiff::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::from(s.parse::<jiff::Timestamp>()?))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(&self.to_jiff())
        } else {
            serializer.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Timestamp;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time or nanoseconds since the Unix epoch")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Timestamp(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(Timestamp)
                    .map_err(|_| E::custom("timestamp out of range"))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse()
                    .map_err(|err| E::custom(format!("bad time {v:?}: {err}")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        let secs = |text| parse_duration(text).map(|d| d.as_secs());
        assert_eq!(secs("60s"), Ok(60));
        assert_eq!(secs("5m"), Ok(300));
        assert_eq!(secs("1h 30m"), Ok(5400));
        assert_eq!(secs("1m 30s"), Ok(90));
        assert_eq!(secs("2192days"), Ok(2192 * 86_400));
        assert_eq!(secs("2w"), Ok(14 * 86_400));
        assert!(secs("soon").is_err());
        assert!(secs("1h ago").is_err());
        assert!(secs("1 month").is_err());
        assert_eq!(format_duration(90), "1m 30s");
        assert_eq!(format_duration(93_784), "1d 2h 3m 4s");
        assert_eq!(format_duration(0), "0s");
    }

    #[test]
    fn json_is_rfc3339_and_binary_is_nanoseconds() {
        let t = Timestamp(1_700_000_000_123_456_789);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2023-11-14T22:13:20.123456789Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        let packed = rmp_serde::to_vec(&t).unwrap();
        assert_eq!(rmp_serde::from_slice::<Timestamp>(&packed).unwrap(), t);
    }
}
