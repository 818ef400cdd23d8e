//! Durations in config files and environment variables.

/// Parses a duration as written in config files and environment variables:
/// `"250ms"`, `"30s"`, `"2m"`, `"1h"`, `"1d"` or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let ms = match unit.trim() {
        "" | "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        "d" => n.saturating_mul(86_400_000),
        _ => return Err(format!("invalid duration unit in {s:?} (use ms, s, m, h or d)")),
    };
    Ok(std::time::Duration::from_millis(ms))
}

/// Serde helpers for `Duration` config fields: `#[serde(with = "agentscale_core::config::duration")]`.
/// Reads a number of milliseconds or a string for [`parse_duration`]; writes
/// milliseconds. [`duration::option`] does the same for `Option<Duration>`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Ms(u64),
        Text(String),
    }

    fn from_repr<E: serde::de::Error>(r: Repr) -> Result<Duration, E> {
        match r {
            Repr::Ms(ms) => Ok(Duration::from_millis(ms)),
            Repr::Text(t) => super::parse_duration(&t).map_err(E::custom),
        }
    }

    /// Writes whole milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Reads milliseconds or a duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        from_repr(Repr::deserialize(d)?)
    }

    /// The same for `Option<Duration>` fields.
    pub mod option {
        use super::*;

        /// Writes whole milliseconds or none.
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                None => s.serialize_none(),
            }
        }

        /// Reads milliseconds, a duration string, or null.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<Repr>::deserialize(d)?.map(from_repr).transpose()
        }
    }
}
