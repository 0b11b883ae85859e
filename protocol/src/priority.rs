//! Priority classes: which work a node keeps doing when it cannot do everything.
//!
//! Four classes, highest first. HTTP requests are classified by route, method and the device
//! token, and may be lowered (never raised) with the [`PRIORITY_HEADER`] header; a published
//! message is `critical` (a stage state) or `best_effort` (a viewer count, a score ticker).

use serde::{Deserialize, Serialize};

/// The request header that lowers a request's class: `x-ringside-priority: best_effort`.
pub const PRIORITY_HEADER: &str = "x-ringside-priority";

/// A priority class. Ordered from the lowest (`Bulk`) to the highest (`Critical`), so that
/// `a.min(b)` is the lower of two classes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Analytics, exports, anything a client marks so: shed first.
    Bulk,
    /// Background prefetch and server-driven refreshes, as clients mark them.
    BestEffort,
    /// Device requests: the default for `/graphql` and the WebSocket upgrade.
    Degraded,
    /// Operator publishes and admin writes, and the state path of connected devices: shed only
    /// when nothing else is left to shed.
    #[default]
    Critical,
}

impl Priority {
    /// Every class, highest first.
    pub const ALL: [Self; 4] = [Self::Critical, Self::Degraded, Self::BestEffort, Self::Bulk];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Degraded => "degraded",
            Self::BestEffort => "best_effort",
            Self::Bulk => "bulk",
        }
    }

    pub fn is_critical(&self) -> bool {
        *self == Self::Critical
    }

    /// This class's position in [`Priority::ALL`] (0 for `critical`): an index for per-class
    /// tables.
    pub fn index(self) -> usize {
        match self {
            Self::Critical => 0,
            Self::Degraded => 1,
            Self::BestEffort => 2,
            Self::Bulk => 3,
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Priority {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|class| class.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "unknown priority {text:?}: expected critical, degraded, best_effort or bulk"
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_order_lowest_first_and_round_trip() {
        assert!(Priority::Bulk < Priority::BestEffort);
        assert!(Priority::BestEffort < Priority::Degraded);
        assert!(Priority::Degraded < Priority::Critical);
        for (index, class) in Priority::ALL.into_iter().enumerate() {
            assert_eq!(class.index(), index);
            assert_eq!(class.as_str().parse::<Priority>(), Ok(class));
            let json = serde_json::to_string(&class).expect("json");
            assert_eq!(json, format!("\"{class}\""));
        }
        assert!("urgent".parse::<Priority>().is_err());
        assert!("Critical".parse::<Priority>().is_err());
    }
}
