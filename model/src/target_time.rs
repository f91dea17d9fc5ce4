//! A recovery target time: the moment a point-in-time clone or restore recovers to.
//!
//! Cluster files and the governor's configuration write it as RFC 3339 with a zone; PostgreSQL's
//! `recovery_target_time` refuses that form (the `T`), so the governor never passes the text on:
//! it parses it here and renders [`TargetTime::to_postgres`]. One parser for both programs, so
//! `spilo validate` accepts exactly what the governor will.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// The forms [`TargetTime`] accepts, for error messages and the schema.
pub const ACCEPTED_FORMS: &str = "an RFC 3339 time with a zone: 2026-11-25T18:00:00Z, with a \
     fraction of a second (2026-11-25T18:00:00.25Z) or an offset (2026-11-25T20:00:00+02:00); a \
     space may replace the T and the offset may be +HH or +HHMM (2026-11-25 18:00:00+00, as \
     PostgreSQL prints it)";

/// A moment in time with microsecond precision (PostgreSQL's), held in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetTime(OffsetDateTime);

/// Why a text is not a [`TargetTime`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be {ACCEPTED_FORMS}; got {0:?}")]
pub struct TargetTimeError(pub String);

impl TargetTime {
    /// Parses one of the [`ACCEPTED_FORMS`]. A fraction finer than microseconds is cut to
    /// microseconds (PostgreSQL's precision).
    pub fn parse(text: &str) -> Result<Self, TargetTimeError> {
        let err = || TargetTimeError(text.to_string());
        let t = text.trim();
        // `YYYY-MM-DD?HH:MM:SS...`: the separator at byte 10 may be a space.
        let mut s: String = match t.as_bytes().get(10) {
            Some(b' ') => format!("{}T{}", &t[..10], &t[11..]),
            Some(b'T' | b't') => t.to_string(),
            _ => return Err(err()),
        };
        // Offsets `+HH` and `+HHMM` become `+HH:MM`.
        if let Some(pos) = s.rfind(['+', '-']).filter(|&p| p > 16) {
            let off = &s[pos + 1..];
            let digits = off.bytes().all(|b| b.is_ascii_digit());
            s = match off.len() {
                2 if digits => format!("{}:00", s),
                4 if digits => format!("{}:{}", &s[..pos + 3], &s[pos + 3..]),
                _ => s,
            };
        }
        let at = OffsetDateTime::parse(&s, &Rfc3339).map_err(|_| err())?;
        let utc = at.to_offset(UtcOffset::UTC);
        let micros = utc.nanosecond() / 1000 * 1000;
        utc.replace_nanosecond(micros).map(Self).map_err(|_| err())
    }

    /// From Unix time in microseconds.
    pub fn from_unix_micros(micros: i64) -> Option<Self> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
            .ok()
            .map(Self)
    }

    /// The current time (the caller's clock; for comparisons at the edges, not in pure code).
    pub fn now() -> Self {
        let now = OffsetDateTime::now_utc();
        let micros = now.nanosecond() / 1000 * 1000;
        Self(now.replace_nanosecond(micros).unwrap_or(now))
    }

    /// Unix time in microseconds.
    pub fn unix_micros(self) -> i64 {
        i64::try_from(self.0.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
    }

    /// The form PostgreSQL's `recovery_target_time` accepts: `2026-11-25 18:00:00.250000+00`.
    pub fn to_postgres(self) -> String {
        self.written(' ', "+00")
    }

    /// Date, `between`, time with microseconds, `zone`.
    fn written(self, between: char, zone: &str) -> String {
        let t = self.0;
        format!(
            "{:04}-{:02}-{:02}{between}{:02}:{:02}:{:02}.{:06}{zone}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        )
    }
}

impl fmt::Display for TargetTime {
    /// RFC 3339 in UTC with microseconds: `2026-11-25T18:00:00.250000Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written('T', "Z"))
    }
}

impl FromStr for TargetTime {
    type Err = TargetTimeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for TargetTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TargetTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for TargetTime {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TargetTime".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": format!("A moment to recover to: {ACCEPTED_FORMS}."),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(s: &str) -> String {
        TargetTime::parse(s)
            .map(TargetTime::to_postgres)
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn every_accepted_form_renders_the_form_postgres_accepts() {
        assert_eq!(pg("2026-11-27T11:24:03Z"), "2026-11-27 11:24:03.000000+00");
        assert_eq!(
            pg("2026-11-27T11:24:03.535896Z"),
            "2026-11-27 11:24:03.535896+00"
        );
        assert_eq!(
            pg("2026-11-27T13:24:03+02:00"),
            "2026-11-27 11:24:03.000000+00"
        );
        assert_eq!(
            pg("2026-11-27t11:24:03.5z"),
            "2026-11-27 11:24:03.500000+00"
        );
        assert_eq!(
            pg("2026-11-27 11:24:03.535896+00"),
            "2026-11-27 11:24:03.535896+00"
        );
        assert_eq!(
            pg("2026-11-27 06:24:03-0500"),
            "2026-11-27 11:24:03.000000+00"
        );
        assert_eq!(
            pg("2026-11-27T11:24:03.123456789Z"),
            "2026-11-27 11:24:03.123456+00"
        );
    }

    #[test]
    fn forms_without_a_zone_or_a_full_time_are_refused_with_the_accepted_forms() {
        for bad in [
            "2026-11-27T11:24:03",
            "2026-11-27",
            "2026-11-27 11:24",
            "yesterday",
            "",
            "2026-13-01T00:00:00Z",
            "2026-11-27T11:24:03+2",
        ] {
            let e = TargetTime::parse(bad).expect_err(bad);
            assert!(e.to_string().contains("RFC 3339"), "{e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn display_and_serde_round_trip_in_utc() {
        let t = TargetTime::parse("2026-11-27T13:24:03.5+02:00").expect("valid");
        assert_eq!(t.to_string(), "2026-11-27T11:24:03.500000Z");
        let json = serde_json::to_string(&t).expect("serializes");
        assert_eq!(json, "\"2026-11-27T11:24:03.500000Z\"");
        assert_eq!(serde_json::from_str::<TargetTime>(&json).ok(), Some(t));
        assert!(serde_json::from_str::<TargetTime>("\"2026-11-27\"").is_err());
        assert_eq!(TargetTime::from_unix_micros(t.unix_micros()), Some(t));
    }
}
