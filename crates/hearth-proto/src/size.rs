//! Human-readable byte sizes (`512M`, `1G`, `256MiB`), as users type them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A size in bytes, parsed from and shown as `<number><unit>`.
///
/// Units are binary: `K`/`KiB` = 1024, `M`/`MiB` = 1024², `G`/`GiB` = 1024³,
/// `T`/`TiB` = 1024⁴; `KB`, `MB`, `GB`, `TB` are accepted as the same binary
/// units because that is what people mean when sizing VMs. A bare number is
/// bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ByteSize(pub u64);

/// Why a string is not a size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteSizeError {
    /// Nothing was given.
    #[error("empty size: expected a number with a unit, like 512M or 2G")]
    Empty,
    /// The number part is missing or not a number.
    #[error("invalid size {0:?}: expected a number with a unit, like 512M or 2G")]
    BadNumber(String),
    /// The unit is not one we know.
    #[error("invalid size {input:?}: unknown unit {unit:?} (use K, M, G or T, optionally followed by iB or B)")]
    BadUnit {
        /// The whole input.
        input: String,
        /// The unit part.
        unit: String,
    },
    /// The value does not fit in 64 bits.
    #[error("size {0:?} is too large")]
    Overflow(String),
}

const KIB: u64 = 1024;

impl ByteSize {
    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        Self(n * KIB * KIB)
    }

    /// `n` gibibytes.
    pub const fn gib(n: u64) -> Self {
        Self(n * KIB * KIB * KIB)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// The size in whole mebibytes, rounded down.
    pub const fn as_mib(self) -> u64 {
        self.0 / (KIB * KIB)
    }
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(ByteSizeError::Empty);
        }
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        if number.is_empty() {
            return Err(ByteSizeError::BadNumber(input.to_string()));
        }
        let value: u64 = number
            .parse()
            .map_err(|_| ByteSizeError::Overflow(input.to_string()))?;
        let multiplier = match unit.trim() {
            "" | "B" | "b" => 1,
            "K" | "k" | "KB" | "kB" | "KiB" => KIB,
            "M" | "m" | "MB" | "MiB" => KIB * KIB,
            "G" | "g" | "GB" | "GiB" => KIB * KIB * KIB,
            "T" | "t" | "TB" | "TiB" => KIB * KIB * KIB * KIB,
            other => {
                return Err(ByteSizeError::BadUnit {
                    input: input.to_string(),
                    unit: other.to_string(),
                })
            }
        };
        value
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| ByteSizeError::Overflow(input.to_string()))
    }
}

impl TryFrom<String> for ByteSize {
    type Error = ByteSizeError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<ByteSize> for String {
    fn from(value: ByteSize) -> Self {
        value.to_string()
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [
            ("T", KIB.pow(4)),
            ("G", KIB.pow(3)),
            ("M", KIB.pow(2)),
            ("K", KIB),
        ];
        for (suffix, scale) in units {
            if self.0 >= scale && self.0.is_multiple_of(scale) {
                return write!(f, "{}{}", self.0 / scale, suffix);
            }
        }
        write!(f, "{}B", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!("512M".parse(), Ok(ByteSize::mib(512)));
        assert_eq!("1G".parse(), Ok(ByteSize::gib(1)));
        assert_eq!("256MiB".parse(), Ok(ByteSize::mib(256)));
        assert_eq!("2GB".parse(), Ok(ByteSize::gib(2)));
        assert_eq!("4096".parse(), Ok(ByteSize(4096)));
    }

    #[test]
    fn rejects_bad_units_and_numbers() {
        assert!(matches!(
            "12XB".parse::<ByteSize>(),
            Err(ByteSizeError::BadUnit { .. })
        ));
        assert!(matches!(
            "M".parse::<ByteSize>(),
            Err(ByteSizeError::BadNumber(_))
        ));
        assert_eq!("".parse::<ByteSize>(), Err(ByteSizeError::Empty));
        assert!(matches!(
            "-5M".parse::<ByteSize>(),
            Err(ByteSizeError::BadNumber(_))
        ));
        assert!(matches!(
            "99999999999999T".parse::<ByteSize>(),
            Err(ByteSizeError::Overflow(_))
        ));
    }

    #[test]
    fn error_message_names_the_input() {
        let err = "12XB".parse::<ByteSize>().unwrap_err().to_string();
        assert!(err.contains("12XB"), "{err}");
    }

    proptest! {
        #[test]
        fn display_round_trips(bytes in any::<u64>()) {
            let size = ByteSize(bytes);
            prop_assert_eq!(size.to_string().parse::<ByteSize>(), Ok(size));
        }

        #[test]
        fn parse_never_panics(s in ".{0,20}") {
            let _ = s.parse::<ByteSize>();
        }
    }
}
