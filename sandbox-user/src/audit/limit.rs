//! How much one sandbox may write to its audit log. The agent decides how many events there are
//! (a denied `connect()` in a loop makes hundreds of thousands a second), and leash writes them
//! as root, so without a bound the agent could fill the host's disk through the log.

use std::fmt;
use std::str::FromStr;

/// A number of bytes, written `1048576`, `64K`/`64KiB`, `256M`/`256MiB` or `1G`/`1GiB` (all
/// binary multiples).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimit(pub u64);

impl LogLimit {
    /// `--audit-log-max`'s default.
    pub const DEFAULT: LogLimit = LogLimit(256 << 20);
    /// The smallest limit accepted: room for a few dozen events.
    const MIN: u64 = 4 << 10;
}

impl FromStr for LogLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a size: write bytes, or a number with K, M or G (1024-based), like 64M");
        let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(digits);
        let shift = match unit {
            "" => 0,
            "K" | "KiB" => 10,
            "M" | "MiB" => 20,
            "G" | "GiB" => 30,
            _ => return Err(bad()),
        };
        let number: u64 = number.parse().map_err(|_| bad())?;
        let bytes = number.checked_mul(1 << shift).ok_or_else(bad)?;
        if bytes < Self::MIN {
            return Err(format!("{text:?} is too small for an audit log: at least 4K"));
        }
        Ok(LogLimit(bytes))
    }
}

impl fmt::Display for LogLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{} {unit}", self.0 >> shift);
            }
        }
        write!(f, "{} bytes", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units_and_bad_ones_say_why() {
        assert_eq!("1048576".parse(), Ok(LogLimit(1 << 20)));
        assert_eq!("64K".parse(), Ok(LogLimit(64 << 10)));
        assert_eq!("256MiB".parse(), Ok(LogLimit::DEFAULT));
        assert_eq!("2G".parse(), Ok(LogLimit(2 << 30)));
        for bad in ["", "M", "12 M", "1.5G", "-1", "10T", "99999999999999999999G"] {
            let err = bad.parse::<LogLimit>().unwrap_err();
            assert!(err.contains("is not a size"), "{bad:?}: {err}");
        }
        assert!("100".parse::<LogLimit>().unwrap_err().contains("too small"));
        assert_eq!(LogLimit::DEFAULT.to_string(), "256 MiB");
        assert_eq!(LogLimit(5000).to_string(), "5000 bytes");
    }
}
