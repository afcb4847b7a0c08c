//! Sizes (`128M`, `1G`), durations (`20ms`), percentages (`1%`) and rates (`10mbit`) as written
//! in lab files: parsed once into exact integers, printed back canonically.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// Splits `s` into a decimal number and its unit; the number as (integer, fraction digits).
fn split_number(s: &str) -> Option<(&str, &str)> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    Some((&s[..end], s[end..].trim()))
}

/// `number * scale` exactly, where `number` is a decimal string; None if not whole or overflow.
fn scaled(number: &str, scale: u64) -> Option<u64> {
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let i: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut v = i.checked_mul(scale)?;
    if !frac.is_empty() {
        let digits = u32::try_from(frac.len()).ok()?;
        let den = 10u64.checked_pow(digits)?;
        let f: u64 = frac.parse().ok()?;
        let num = f.checked_mul(scale)?;
        if num % den != 0 {
            return None;
        }
        v = v.checked_add(num / den)?;
    }
    Some(v)
}

macro_rules! string_unit {
    ($t:ident, $name:literal, $pattern:literal, $desc:literal, $example:literal) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "{} like {}", $desc, $example)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$t, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$t, E> {
                        Err(E::custom(format!(
                            "{v} has no unit: write {} like {}",
                            $desc, $example
                        )))
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$t, E> {
                        self.visit_i64(v as i64)
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$t, E> {
                        Err(E::custom(format!(
                            "{v} has no unit: write {} like {}",
                            $desc, $example
                        )))
                    }
                }
                d.deserialize_any(V)
            }
        }

        impl JsonSchema for $t {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "pattern": $pattern,
                    "description": concat!($desc, ", e.g. ", $example),
                })
            }
        }
    };
}

/// A memory size in MiB (written `128M`, `1G`, `512MiB`, `1.5G`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemMib(pub u64);

impl FromStr for MemMib {
    type Err = String;
    fn from_str(s: &str) -> Result<MemMib, String> {
        let bad = || format!("'{s}' is not a size: write a size like 128M or 1G");
        let (num, unit) = split_number(s).ok_or_else(bad)?;
        let kib = match unit.to_ascii_lowercase().as_str() {
            "k" | "kb" | "kib" => 1,
            "m" | "mb" | "mib" => 1024,
            "g" | "gb" | "gib" => 1024 * 1024,
            "t" | "tb" | "tib" => 1024 * 1024 * 1024,
            "" => return Err(format!("'{s}' has no unit: write a size like 128M or 1G")),
            _ => return Err(bad()),
        };
        let k = scaled(num, kib).ok_or_else(bad)?;
        if k % 1024 != 0 {
            return Err(format!(
                "'{s}' is not a whole number of MiB: write it in M (e.g. 128M)"
            ));
        }
        Ok(MemMib(k / 1024))
    }
}

impl fmt::Display for MemMib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 != 0 && self.0 % 1024 == 0 {
            write!(f, "{}G", self.0 / 1024)
        } else {
            write!(f, "{}M", self.0)
        }
    }
}

string_unit!(
    MemMib,
    "Size",
    r"^[0-9]+(\.[0-9]+)?\s*([KkMmGgTt]([Ii]?[Bb])?)$",
    "a size",
    "128M or 1G"
);

/// A duration in microseconds (written `20ms`, `1.5ms`, `500us`, `2s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Micros(pub u64);

impl FromStr for Micros {
    type Err = String;
    fn from_str(s: &str) -> Result<Micros, String> {
        let bad = || format!("'{s}' is not a duration: write a duration like 20ms or 1s");
        let (num, unit) = split_number(s).ok_or_else(bad)?;
        let scale = match unit {
            "us" | "µs" => 1,
            "ms" => 1000,
            "s" => 1_000_000,
            "" => {
                return Err(format!(
                    "'{s}' has no unit: write a duration like 20ms or 1s"
                ))
            }
            _ => return Err(bad()),
        };
        let v = scaled(num, scale)
            .ok_or_else(|| format!("'{s}' is finer than a microsecond or too large"))?;
        Ok(Micros(v))
    }
}

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 != 0 && self.0 % 1_000_000 == 0 {
            write!(f, "{}s", self.0 / 1_000_000)
        } else if self.0 % 1000 == 0 {
            write!(f, "{}ms", self.0 / 1000)
        } else {
            write!(f, "{}us", self.0)
        }
    }
}

impl Micros {
    /// As a [`std::time::Duration`].
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_micros(self.0)
    }
}

string_unit!(
    Micros,
    "Duration",
    r"^[0-9]+(\.[0-9]+)?\s*(us|µs|ms|s)$",
    "a duration",
    "20ms or 1s"
);

/// A percentage in units of 0.0001 % (written `1%`, `0.25%`, `100%`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Percent(pub u32);

impl Percent {
    /// 100 %.
    pub const FULL: Percent = Percent(1_000_000);

    /// As a float from 0.0 to 100.0.
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }
}

impl FromStr for Percent {
    type Err = String;
    fn from_str(s: &str) -> Result<Percent, String> {
        let bad = || format!("'{s}' is not a percentage: write a percentage like 1% or 0.5%");
        let (num, unit) = split_number(s).ok_or_else(bad)?;
        if unit != "%" {
            return Err(if unit.is_empty() {
                format!("'{s}' has no unit: write a percentage like 1% or 0.5%")
            } else {
                bad()
            });
        }
        let v = scaled(num, 10_000)
            .ok_or_else(|| format!("'{s}': at most 4 decimals in a percentage"))?;
        if v > 1_000_000 {
            return Err(format!("'{s}' is more than 100%"));
        }
        Ok(Percent(v as u32))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let int = self.0 / 10_000;
        let frac = self.0 % 10_000;
        if frac == 0 {
            write!(f, "{int}%")
        } else {
            let s = format!("{frac:04}");
            write!(f, "{int}.{}%", s.trim_end_matches('0'))
        }
    }
}

string_unit!(
    Percent,
    "Percent",
    r"^[0-9]+(\.[0-9]{1,4})?\s*%$",
    "a percentage",
    "1% or 0.5%"
);

/// A rate in bits per second (written `10mbit`, `1gbit`, `512kbit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BitRate(pub u64);

impl FromStr for BitRate {
    type Err = String;
    fn from_str(s: &str) -> Result<BitRate, String> {
        let bad = || format!("'{s}' is not a rate: write a rate like 10mbit or 1gbit");
        let (num, unit) = split_number(s).ok_or_else(bad)?;
        let scale = match unit.to_ascii_lowercase().as_str() {
            "bit" => 1,
            "kbit" => 1000,
            "mbit" => 1_000_000,
            "gbit" => 1_000_000_000,
            "kbps" | "mbps" | "gbps" => {
                return Err(format!(
                    "'{s}' is ambiguous (tc reads 'bps' as bytes): write bits, like 10mbit"
                ))
            }
            "" => {
                return Err(format!(
                    "'{s}' has no unit: write a rate like 10mbit or 1gbit"
                ))
            }
            _ => return Err(bad()),
        };
        let v = scaled(num, scale).ok_or_else(bad)?;
        if v == 0 {
            return Err(format!("'{s}': a rate must be more than 0"));
        }
        Ok(BitRate(v))
    }
}

impl fmt::Display for BitRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v % 1_000_000_000 == 0 {
            write!(f, "{}gbit", v / 1_000_000_000)
        } else if v % 1_000_000 == 0 {
            write!(f, "{}mbit", v / 1_000_000)
        } else if v % 1000 == 0 {
            write!(f, "{}kbit", v / 1000)
        } else {
            write!(f, "{v}bit")
        }
    }
}

string_unit!(
    BitRate,
    "Rate",
    r"^[0-9]+(\.[0-9]+)?\s*([kKmMgG]?bit)$",
    "a rate",
    "10mbit or 1gbit"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("128M".parse::<MemMib>(), Ok(MemMib(128)));
        assert_eq!("1G".parse::<MemMib>(), Ok(MemMib(1024)));
        assert_eq!("1.5G".parse::<MemMib>(), Ok(MemMib(1536)));
        assert_eq!("512MiB".parse::<MemMib>(), Ok(MemMib(512)));
        assert_eq!("2048K".parse::<MemMib>(), Ok(MemMib(2)));
        assert!("128".parse::<MemMib>().unwrap_err().contains("no unit"));
        assert!("12Q".parse::<MemMib>().unwrap_err().contains("not a size"));
        assert!("100K"
            .parse::<MemMib>()
            .unwrap_err()
            .contains("whole number of MiB"));
        assert_eq!(MemMib(1024).to_string(), "1G");
        assert_eq!(MemMib(1536).to_string(), "1536M");
    }

    #[test]
    fn durations() {
        assert_eq!("20ms".parse::<Micros>(), Ok(Micros(20_000)));
        assert_eq!("1.5ms".parse::<Micros>(), Ok(Micros(1500)));
        assert_eq!("2s".parse::<Micros>(), Ok(Micros(2_000_000)));
        assert_eq!("500us".parse::<Micros>(), Ok(Micros(500)));
        assert!("20".parse::<Micros>().unwrap_err().contains("no unit"));
        assert!("20 minutes".parse::<Micros>().is_err());
        assert_eq!(Micros(1500).to_string(), "1500us");
        assert_eq!(Micros(20_000).to_string(), "20ms");
    }

    #[test]
    fn percentages() {
        assert_eq!("1%".parse::<Percent>(), Ok(Percent(10_000)));
        assert_eq!("0.25%".parse::<Percent>(), Ok(Percent(2500)));
        assert!("101%"
            .parse::<Percent>()
            .unwrap_err()
            .contains("more than 100%"));
        assert!("5".parse::<Percent>().unwrap_err().contains("no unit"));
        assert_eq!(Percent(2500).to_string(), "0.25%");
        assert_eq!(Percent(10_000).as_f64(), 1.0);
    }

    #[test]
    fn rates() {
        assert_eq!("10mbit".parse::<BitRate>(), Ok(BitRate(10_000_000)));
        assert_eq!("1Gbit".parse::<BitRate>(), Ok(BitRate(1_000_000_000)));
        assert!("10mbps"
            .parse::<BitRate>()
            .unwrap_err()
            .contains("ambiguous"));
        assert_eq!(BitRate(1_500_000).to_string(), "1500kbit");
    }
}
