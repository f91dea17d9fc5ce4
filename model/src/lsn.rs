//! PostgreSQL WAL positions and timelines as newtypes, so that a byte count, an LSN and a
//! timeline can never be mixed up. LSNs print and parse in PostgreSQL's own `X/Y` form, and are
//! stored that way in JSON so that `etcdctl get` output stays readable.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A write-ahead-log position (PostgreSQL's `pg_lsn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// A PostgreSQL timeline id. A promotion starts a new, higher timeline.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct TimelineId(pub u32);

/// Why an LSN string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an LSN of the form X/Y in hexadecimal: {0:?}")]
pub struct LsnParseError(String);

impl Lsn {
    /// How many bytes `self` is ahead of `other` (0 when it is not ahead).
    pub fn bytes_ahead_of(self, other: Lsn) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl FromStr for Lsn {
    type Err = LsnParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_postgres_notation() {
        let lsn: Lsn = "16/B374D848".parse().expect("valid lsn");
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn(0x3000060).to_string(), "0/3000060");
    }

    #[test]
    fn lsn_refuses_garbage() {
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
    }

    #[test]
    fn lsn_is_a_string_in_json() {
        let json = serde_json::to_string(&Lsn(0x100)).expect("serializes");
        assert_eq!(json, "\"0/100\"");
        let back: Lsn = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, Lsn(0x100));
    }

    #[test]
    fn bytes_ahead_saturates() {
        assert_eq!(Lsn(10).bytes_ahead_of(Lsn(4)), 6);
        assert_eq!(Lsn(4).bytes_ahead_of(Lsn(10)), 0);
    }
}
