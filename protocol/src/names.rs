//! Validated identifiers. Each type can only hold a well-formed value, so code that receives
//! one never re-checks it.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted event id, in bytes.
pub const EVENT_ID_MAX_LEN: usize = 64;
/// Longest accepted stage name, in bytes.
pub const STAGE_MAX_LEN: usize = 32;
/// Prefix of every event topic.
pub const EVENT_TOPIC_PREFIX: &str = "event:";

/// Why a name was rejected. The message is safe to show to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "invalid event id {0:?}: use 1 to 64 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit"
    )]
    EventId(String),
    #[error("invalid topic {0:?}: expected \"event:<id>\"")]
    Topic(String),
    #[error("invalid stage {0:?}: use 1 to 32 characters from A-Z 0-9 _, starting with a letter")]
    Stage(String),
}

/// The id of a live event, e.g. `fight-night`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(Arc<str>);

impl EventId {
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let mut chars = text.chars();
        let starts_well = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if starts_well && rest_ok && text.len() <= EVENT_ID_MAX_LEN {
            Ok(Self(Arc::from(text)))
        } else {
            Err(NameError::EventId(truncate_for_message(text)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic devices subscribe to for this event.
    pub fn topic(&self) -> Topic {
        Topic(Arc::from(format!("{EVENT_TOPIC_PREFIX}{}", self.0)))
    }
}

/// A subscribable topic. Protocol v1 has one kind: `event:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    pub fn parse(text: &str) -> Result<Self, NameError> {
        match text.strip_prefix(EVENT_TOPIC_PREFIX) {
            Some(id) if EventId::parse(id).is_ok() => Ok(Self(Arc::from(text))),
            _ => Err(NameError::Topic(truncate_for_message(text))),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The event this topic carries.
    pub fn event_id(&self) -> EventId {
        let id = self.0.strip_prefix(EVENT_TOPIC_PREFIX).unwrap_or(&self.0);
        EventId(Arc::from(id))
    }
}

/// The stage of an event, e.g. `UPCOMING`, `LIVE`, `ENDED`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stage(Arc<str>);

impl Stage {
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let mut chars = text.chars();
        let starts_well = chars.next().is_some_and(|c| c.is_ascii_uppercase());
        let rest_ok = chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if starts_well && rest_ok && text.len() <= STAGE_MAX_LEN {
            Ok(Self(Arc::from(text)))
        } else {
            Err(NameError::Stage(truncate_for_message(text)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Error messages quote the rejected text; keep that quote short so a hostile client cannot
/// make us echo megabytes back.
fn truncate_for_message(text: &str) -> String {
    const QUOTE_MAX_CHARS: usize = 80;
    text.chars().take(QUOTE_MAX_CHARS).collect()
}

macro_rules! string_name {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(text: &str) -> Result<Self, NameError> {
                Self::parse(text)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_name!(EventId);
string_name!(Topic);
string_name!(Stage);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids() {
        assert!(EventId::parse("fight-night").is_ok());
        assert!(EventId::parse("F1.race_2026").is_ok());
        assert!(EventId::parse("").is_err());
        assert!(EventId::parse("-leading-dash").is_err());
        assert!(EventId::parse("has space").is_err());
        assert!(EventId::parse("émoji").is_err());
        assert!(EventId::parse(&"a".repeat(EVENT_ID_MAX_LEN)).is_ok());
        assert!(EventId::parse(&"a".repeat(EVENT_ID_MAX_LEN + 1)).is_err());
    }

    #[test]
    fn topics_round_trip_through_event_ids() {
        let topic = Topic::parse("event:fight-night").expect("valid topic");
        assert_eq!(topic.event_id().as_str(), "fight-night");
        assert_eq!(topic.event_id().topic(), topic);
        assert!(Topic::parse("fight-night").is_err());
        assert!(Topic::parse("event:").is_err());
        assert!(Topic::parse("user:42").is_err());
    }

    #[test]
    fn stages() {
        assert!(Stage::parse("LIVE").is_ok());
        assert!(Stage::parse("HALF_TIME2").is_ok());
        assert!(Stage::parse("live").is_err());
        assert!(Stage::parse("2ND").is_err());
        assert!(Stage::parse("").is_err());
    }

    #[test]
    fn error_messages_quote_little() {
        let message = EventId::parse(&"!".repeat(10_000)).unwrap_err().to_string();
        assert!(message.len() < 300, "{}", message.len());
    }
}
