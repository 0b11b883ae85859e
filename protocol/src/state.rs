//! The versioned state of one event: what the operator publishes and every device receives.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::names::{Stage, Topic};
use crate::priority::Priority;

/// Largest accepted payload, in bytes of JSON text. Broadcast messages stay small so that one
/// encoded copy per node can be shared by every connection.
pub const PAYLOAD_MAX_BYTES: usize = 4 * 1024;

/// Deepest accepted payload nesting (objects and arrays; `{}` is 1). JSON readers stop at
/// some depth (serde_json, and with it prefetch's `state.payload`, at 128; many device parsers
/// lower), and a payload every reader cannot take whole must be refused at publish rather than
/// relayed to some readers and lost by others. 32 leaves room under every reader's limit for
/// the envelopes a payload travels in.
pub const PAYLOAD_MAX_DEPTH: usize = 32;

/// One state of one event. `version` strictly increases per topic; applying the same state
/// twice changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventState {
    pub topic: Topic,
    pub version: u64,
    pub stage: Stage,
    /// When the control plane accepted the publish, in milliseconds since the Unix epoch.
    pub published_at_ms: u64,
    pub payload: Payload,
    /// `critical` (the default, left out of the JSON): a stage state, never dropped, conflated
    /// to the newest per topic. `best_effort`: an extra message of the event (a viewer count,
    /// a score ticker) in a lane of its own, conflated or dropped first when a connection or
    /// the node is behind, and never the event's current state.
    #[serde(default, skip_serializing_if = "Priority::is_critical")]
    pub priority: Priority,
    /// The window, in milliseconds from `published_at_ms`, within which devices that lack
    /// content for this stage should fetch it, each at a random moment inside it. Absent when
    /// there is nothing to spread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_within_ms: Option<u64>,
}

/// The clock `published_at_ms` is read from: milliseconds since the Unix epoch (0 if the clock
/// is before it).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a payload was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload must be a JSON object")]
    NotAnObject,
    #[error("payload is {size} bytes, more than the {PAYLOAD_MAX_BYTES} byte limit")]
    TooLarge { size: usize },
    #[error("payload nests objects and arrays more than {PAYLOAD_MAX_DEPTH} levels deep")]
    TooDeep,
}

/// The JSON object an operator attached to a publish, kept as the exact text it arrived as so
/// that devices receive it unchanged.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// Accepts any JSON object of at most [`PAYLOAD_MAX_BYTES`] nested at most
    /// [`PAYLOAD_MAX_DEPTH`] deep.
    pub fn from_raw(raw: Box<RawValue>) -> Result<Self, PayloadError> {
        let text = raw.get();
        if !text.starts_with('{') {
            return Err(PayloadError::NotAnObject);
        }
        if text.len() > PAYLOAD_MAX_BYTES {
            return Err(PayloadError::TooLarge { size: text.len() });
        }
        if json_nesting(text.as_bytes()) > PAYLOAD_MAX_DEPTH {
            return Err(PayloadError::TooDeep);
        }
        Ok(Self(raw))
    }

    /// Parses JSON text into a payload (used by the CLI and tests).
    pub fn parse(text: &str) -> Result<Self, PayloadError> {
        let raw =
            RawValue::from_string(text.trim().to_owned()).map_err(|_| PayloadError::NotAnObject)?;
        Self::from_raw(raw)
    }

    /// The empty object `{}`.
    pub fn empty() -> Self {
        Self::parse("{}").unwrap_or_else(|_| unreachable!("{{}} is a JSON object"))
    }

    pub fn as_json(&self) -> &str {
        self.0.get()
    }
}

/// Deepest nesting of objects and arrays in JSON text, brackets in strings skipped, in one pass
/// without recursion: safe to run on untrusted text before a recursive parser sees it (for text
/// that is not valid JSON it is still a bound on what a parser would have to descend).
pub fn json_nesting(text: &[u8]) -> usize {
    let (mut depth, mut deepest, mut at) = (0usize, 0usize, 0usize);
    while at < text.len() {
        match text[at] {
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => {
                at += 1;
                while at < text.len() && text[at] != b'"' {
                    // An escape's next byte never ends the string.
                    at += if text[at] == b'\\' { 2 } else { 1 };
                }
            }
            _ => {}
        }
        at += 1;
    }
    deepest
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.as_json() == other.as_json()
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Self::from_raw(raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_keeps_the_exact_text() {
        let payload = Payload::parse(r#"{ "b": 1,  "a": [true] }"#).expect("object");
        assert_eq!(payload.as_json(), r#"{ "b": 1,  "a": [true] }"#);
    }

    #[test]
    fn payload_must_be_a_small_object() {
        assert_eq!(
            Payload::parse("[1]").unwrap_err(),
            PayloadError::NotAnObject
        );
        assert_eq!(
            Payload::parse("not json").unwrap_err(),
            PayloadError::NotAnObject
        );
        let big = format!(r#"{{"x":"{}"}}"#, "y".repeat(PAYLOAD_MAX_BYTES));
        assert!(matches!(
            Payload::parse(&big),
            Err(PayloadError::TooLarge { .. })
        ));
    }

    fn nested(depth: usize) -> String {
        format!(
            "{}1{}",
            r#"{"a":["#.repeat(depth / 2),
            "]}".repeat(depth / 2)
        )
    }

    #[test]
    fn payload_depth_is_limited() {
        assert!(Payload::parse(&nested(PAYLOAD_MAX_DEPTH)).is_ok());
        assert_eq!(
            Payload::parse(&nested(PAYLOAD_MAX_DEPTH + 2)).unwrap_err(),
            PayloadError::TooDeep
        );
        let quoted = format!(r#"{{"a":"{}\"{}"}}"#, "[".repeat(100), "{".repeat(100));
        assert!(Payload::parse(&quoted).is_ok());
    }
}
