//! The region a vault serves.

use std::fmt;
use std::str::FromStr;

/// A legal region such as `eu`: 2 to 16 characters of `[a-z0-9-]`, starting
/// with a letter. The region is in every KDF salt and every AAD.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region(String);

impl Region {
    /// The region's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A region name that breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid region name (2 to 16 characters of a-z, 0-9, '-', starting with a letter)")]
pub struct InvalidRegion;

impl FromStr for Region {
    type Err = InvalidRegion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (2..=16).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(Region(s.to_owned()))
        } else {
            Err(InvalidRegion)
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Region({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        for good in ["eu", "us-east-1", "ap2"] {
            assert_eq!(good.parse::<Region>().unwrap().as_str(), good);
        }
        for bad in [
            "",
            "e",
            "EU",
            "1eu",
            "eu_west",
            "a-very-long-region-name",
            "eu/x",
        ] {
            assert_eq!(bad.parse::<Region>(), Err(InvalidRegion), "{bad}");
        }
    }
}
