//! WebSocket frames of protocol v1: JSON text, one object per frame, each with a `type`.
//!
//! Decoding runs in two steps, the `type` first and then the body of that type, so that the
//! gateway can tell invalid JSON (close 1007) from a well-formed frame that breaks a policy such
//! as a malformed topic name (close 1008). Unknown fields are ignored, so that newer clients and
//! servers can add fields without breaking older peers.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::error::Category;

use crate::close::ErrorCode;
use crate::names::{NameError, Topic};
use crate::state::EventState;

/// A frame a device sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// Start receiving the topics; for each, the current state is sent right after
    /// `subscribed` when its version is greater than `since`.
    Subscribe {
        topics: Vec<SubscribeTopic>,
    },
    Unsubscribe {
        topics: Vec<Topic>,
    },
    /// The device applied `version` of `topic`; counted for delivery statistics.
    Ack {
        topic: Topic,
        version: u64,
    },
}

/// One entry of a `subscribe` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeTopic {
    pub topic: Topic,
    /// The newest version the device already holds; 0 for none.
    #[serde(default)]
    pub since: u64,
}

/// Why a client frame could not be decoded. The message is safe to send back to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("frame does not match protocol v1: {0}")]
    InvalidFrame(String),
    #[error("{0}")]
    BadName(#[from] NameError),
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidJson(_) => ErrorCode::InvalidJson,
            Self::InvalidFrame(_) => ErrorCode::InvalidFrame,
            Self::BadName(_) => ErrorCode::BadTopic,
        }
    }

    fn from_json(error: &serde_json::Error) -> Self {
        match error.classify() {
            Category::Syntax | Category::Eof | Category::Io => Self::InvalidJson(error.to_string()),
            Category::Data => Self::InvalidFrame(error.to_string()),
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
struct SubscribeWire<'a> {
    #[serde(borrow)]
    topics: Vec<SubscribeTopicWire<'a>>,
}

#[derive(Deserialize)]
struct SubscribeTopicWire<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(default)]
    since: u64,
}

#[derive(Deserialize)]
struct UnsubscribeWire<'a> {
    #[serde(borrow)]
    topics: Vec<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct AckWire<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    version: u64,
}

fn parse_body<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, DecodeError> {
    serde_json::from_str(text).map_err(|error| DecodeError::from_json(&error))
}

impl ClientFrame {
    /// Decodes one text frame from a device.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        let envelope: Envelope<'_> = parse_body(text)?;
        match envelope.kind.as_ref() {
            "subscribe" => {
                let wire: SubscribeWire<'_> = parse_body(text)?;
                let topics = wire
                    .topics
                    .into_iter()
                    .map(|entry| {
                        Ok(SubscribeTopic {
                            topic: Topic::parse(&entry.topic)?,
                            since: entry.since,
                        })
                    })
                    .collect::<Result<_, NameError>>()?;
                Ok(Self::Subscribe { topics })
            }
            "unsubscribe" => {
                let wire: UnsubscribeWire<'_> = parse_body(text)?;
                let topics = wire
                    .topics
                    .iter()
                    .map(|t| Topic::parse(t))
                    .collect::<Result<_, _>>()?;
                Ok(Self::Unsubscribe { topics })
            }
            "ack" => {
                let wire: AckWire<'_> = parse_body(text)?;
                Ok(Self::Ack {
                    topic: Topic::parse(&wire.topic)?,
                    version: wire.version,
                })
            }
            other => Err(DecodeError::InvalidFrame(format!(
                "unknown frame type {:?}; expected subscribe, unsubscribe or ack",
                other.chars().take(40).collect::<String>()
            ))),
        }
    }

    /// Encodes the frame as JSON text (used by clients).
    pub fn encode(&self) -> String {
        #[derive(Serialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Wire<'a> {
            Subscribe { topics: &'a [SubscribeTopic] },
            Unsubscribe { topics: &'a [Topic] },
            Ack { topic: &'a Topic, version: u64 },
        }
        let wire = match self {
            Self::Subscribe { topics } => Wire::Subscribe { topics },
            Self::Unsubscribe { topics } => Wire::Unsubscribe { topics },
            Self::Ack { topic, version } => Wire::Ack {
                topic,
                version: *version,
            },
        };
        serde_json::to_string(&wire).unwrap_or_else(|_| unreachable!("frames always encode"))
    }
}

/// Why the server is about to close the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoawayReason {
    /// The node is shutting down or draining.
    Shutdown,
    /// The connection never subscribed (or dropped every topic) for too long.
    Idle,
    /// The peer stopped answering heartbeats.
    HeartbeatTimeout,
    /// The device token expired; reconnect with a fresh one.
    TokenExpired,
    /// The device did not read what it was sent for longer than the send timeout; the close
    /// that follows is 4008.
    SlowConsumer,
    /// The connection reached its (randomized) maximum lifetime: reconnect, to whichever node
    /// the load balancer picks, so that a fleet rebalances continuously.
    MaxLifetime,
    /// A reason this client version does not know.
    #[serde(other)]
    Other,
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        connection_id: String,
        node: String,
        heartbeat_ms: u64,
        protocol: u32,
    },
    Subscribed {
        topics: Vec<Topic>,
    },
    Unsubscribed {
        topics: Vec<Topic>,
    },
    State(EventState),
    Goaway {
        reconnect_after_ms: u64,
        reason: GoawayReason,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[derive(Deserialize)]
struct WelcomeWire {
    connection_id: String,
    node: String,
    heartbeat_ms: u64,
    protocol: u32,
}

#[derive(Deserialize)]
struct TopicsWire {
    topics: Vec<Topic>,
}

#[derive(Deserialize)]
struct GoawayWire {
    reconnect_after_ms: u64,
    reason: GoawayReason,
}

#[derive(Deserialize)]
struct ErrorWire {
    code: ErrorCode,
    message: String,
}

impl GoawayReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shutdown => "shutdown",
            Self::Idle => "idle",
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::TokenExpired => "token_expired",
            Self::SlowConsumer => "slow_consumer",
            Self::MaxLifetime => "max_lifetime",
            Self::Other => "other",
        }
    }
}

impl ServerFrame {
    /// Encodes the frame as JSON text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| unreachable!("frames always encode"))
    }

    /// Decodes one text frame from the server (used by clients).
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        let envelope: Envelope<'_> = parse_body(text)?;
        Ok(match envelope.kind.as_ref() {
            "welcome" => {
                let w: WelcomeWire = parse_body(text)?;
                Self::Welcome {
                    connection_id: w.connection_id,
                    node: w.node,
                    heartbeat_ms: w.heartbeat_ms,
                    protocol: w.protocol,
                }
            }
            "subscribed" => Self::Subscribed {
                topics: parse_body::<TopicsWire>(text)?.topics,
            },
            "unsubscribed" => Self::Unsubscribed {
                topics: parse_body::<TopicsWire>(text)?.topics,
            },
            "state" => Self::State(parse_body(text)?),
            "goaway" => {
                let g: GoawayWire = parse_body(text)?;
                Self::Goaway {
                    reconnect_after_ms: g.reconnect_after_ms,
                    reason: g.reason,
                }
            }
            "error" => {
                let e: ErrorWire = parse_body(text)?;
                Self::Error {
                    code: e.code,
                    message: e.message,
                }
            }
            other => {
                return Err(DecodeError::InvalidFrame(format!(
                    "unknown frame type {:?}",
                    other.chars().take(40).collect::<String>()
                )));
            }
        })
    }
}

/// Encodes a `state` frame once, for every connection that receives it.
pub fn encode_state(state: &EventState) -> String {
    #[derive(Serialize)]
    struct StateFrame<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(flatten)]
        state: &'a EventState,
    }
    let frame = StateFrame {
        kind: "state",
        state,
    };
    serde_json::to_string(&frame).unwrap_or_else(|_| unreachable!("states always encode"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Stage;
    use crate::state::Payload;

    #[test]
    fn decodes_subscribe_with_and_without_since() {
        let frame = ClientFrame::decode(
            r#"{"type":"subscribe","topics":[{"topic":"event:a","since":3},{"topic":"event:b"}]}"#,
        )
        .expect("valid");
        let ClientFrame::Subscribe { topics } = frame else {
            panic!("not a subscribe")
        };
        assert_eq!(topics[0].since, 3);
        assert_eq!(topics[1].since, 0);
        assert_eq!(topics[1].topic.as_str(), "event:b");
    }

    #[test]
    fn tells_error_kinds_apart() {
        let cases = [
            ("{not json", ErrorCode::InvalidJson),
            ("", ErrorCode::InvalidJson),
            ("[]", ErrorCode::InvalidFrame),
            (r#"{"topics":[]}"#, ErrorCode::InvalidFrame),
            (r#"{"type":"dance"}"#, ErrorCode::InvalidFrame),
            (r#"{"type":"subscribe"}"#, ErrorCode::InvalidFrame),
            (
                r#"{"type":"subscribe","topics":[{"topic":"event:a","since":-1}]}"#,
                ErrorCode::InvalidFrame,
            ),
            (
                r#"{"type":"ack","topic":"event:a"}"#,
                ErrorCode::InvalidFrame,
            ),
            (
                r#"{"type":"subscribe","topics":[{"topic":"nope"}]}"#,
                ErrorCode::BadTopic,
            ),
            (
                r#"{"type":"unsubscribe","topics":["event:"]}"#,
                ErrorCode::BadTopic,
            ),
        ];
        for (text, code) in cases {
            let error = ClientFrame::decode(text).expect_err(text);
            assert_eq!(error.code(), code, "{text}: {error}");
        }
    }

    #[test]
    fn state_frame_is_flat_and_carries_the_payload_unchanged() {
        let state = EventState {
            topic: Topic::parse("event:x").expect("topic"),
            version: 7,
            stage: Stage::parse("LIVE").expect("stage"),
            published_at_ms: 1_700_000_000_000,
            payload: Payload::parse(r#"{"z":1, "a":"é"}"#).expect("payload"),
            priority: crate::Priority::Critical,
            fetch_within_ms: None,
        };
        let text = encode_state(&state);
        assert_eq!(
            text,
            r#"{"type":"state","topic":"event:x","version":7,"stage":"LIVE","published_at_ms":1700000000000,"payload":{"z":1, "a":"é"}}"#
        );
        assert_eq!(
            ServerFrame::decode(&text).expect("decodes"),
            ServerFrame::State(state.clone())
        );
        assert_eq!(ServerFrame::State(state).encode(), text);
    }

    #[test]
    fn goaway_reasons_round_trip_by_their_wire_names() {
        for reason in [
            GoawayReason::Shutdown,
            GoawayReason::Idle,
            GoawayReason::HeartbeatTimeout,
            GoawayReason::TokenExpired,
            GoawayReason::SlowConsumer,
            GoawayReason::MaxLifetime,
        ] {
            let frame = ServerFrame::Goaway {
                reconnect_after_ms: 9,
                reason,
            };
            let text = frame.encode();
            assert!(
                text.contains(&format!(r#""reason":"{}""#, reason.as_str())),
                "{text}"
            );
            assert_eq!(ServerFrame::decode(&text).expect("decodes"), frame);
        }
    }

    #[test]
    fn unknown_goaway_reasons_are_tolerated() {
        let frame =
            ServerFrame::decode(r#"{"type":"goaway","reconnect_after_ms":5,"reason":"new"}"#)
                .expect("decodes");
        assert_eq!(
            frame,
            ServerFrame::Goaway {
                reconnect_after_ms: 5,
                reason: GoawayReason::Other
            }
        );
    }

    #[test]
    fn unknown_error_codes_are_tolerated() {
        let frame = ServerFrame::decode(r#"{"type":"error","code":"new_code","message":"m"}"#)
            .expect("decodes");
        assert_eq!(
            frame,
            ServerFrame::Error {
                code: ErrorCode::Other,
                message: "m".into()
            }
        );
    }
}
