//! The closed set of error codes a device can see, and how each ends the connection.

use serde::{Deserialize, Serialize};

/// WebSocket close codes Ringside sends (RFC 6455 section 7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// Normal closure.
    pub const NORMAL: Self = Self(1000);
    /// The server is going away (shutdown, drain, connection lifetime, idle).
    pub const GOING_AWAY: Self = Self(1001);
    /// The peer broke the WebSocket protocol itself.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// A frame was not valid JSON or did not match the schema.
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// A frame was valid but broke a policy (bad topic, too many topics, no subscription).
    pub const POLICY_VIOLATION: Self = Self(1008);
    /// A frame was larger than the configured limit.
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    /// The server hit an unexpected condition.
    pub const INTERNAL_ERROR: Self = Self(1011);
    /// The server is overloaded; reconnect later.
    pub const TRY_AGAIN_LATER: Self = Self(1013);
    /// The client sent frames faster than its per-connection rate allows. An application code
    /// (RFC 6455 reserves 4000-4999 for them) of its own, so that a client can tell "slow down"
    /// from every other policy close without parsing the reason; 4029 echoes HTTP 429.
    pub const RATE_LIMITED: Self = Self(4029);
    /// The connection's socket stayed full (the device did not read) past the send timeout:
    /// its unsent states were dropped and the connection closed. An application code of its
    /// own so that a client can tell "read faster, or from a better network" from an overload
    /// of the node; 4008 echoes HTTP 408 (the device timed out, not the node).
    pub const SLOW_CONSUMER: Self = Self(4008);
}

/// Error codes of `{"type":"error"}` frames. Stable: clients may match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not valid JSON (or not UTF-8 text).
    InvalidJson,
    /// Valid JSON, but not a frame of protocol v1 (unknown type, missing or mistyped field).
    InvalidFrame,
    /// A topic name was malformed.
    BadTopic,
    /// The connection would hold more topics than allowed.
    TooManyTopics,
    /// A frame exceeded the size limit.
    FrameTooLarge,
    /// Binary frames are not part of protocol v1.
    BinaryNotSupported,
    /// The node holds its limit of topics that have no state yet (events not published, or
    /// made-up names); retry later. Topics with a state are never refused.
    TopicLimit,
    /// The connection sent frames (of any kind, pings and pongs included) faster than its
    /// inbound rate limit allows.
    RateLimited,
    /// The peer broke the WebSocket protocol itself (e.g. a continuation frame without a
    /// start, a control frame that is fragmented or too long).
    ProtocolViolation,
    /// A code this client version does not know (the server never sends it): decoding an
    /// `error` frame of a newer server still succeeds, and the close code says the rest.
    #[serde(other)]
    Other,
}

impl ErrorCode {
    pub fn close_code(self) -> CloseCode {
        match self {
            Self::InvalidJson | Self::InvalidFrame | Self::BinaryNotSupported => {
                CloseCode::INVALID_PAYLOAD
            }
            Self::BadTopic | Self::TooManyTopics | Self::Other => CloseCode::POLICY_VIOLATION,
            Self::FrameTooLarge => CloseCode::MESSAGE_TOO_BIG,
            Self::TopicLimit => CloseCode::TRY_AGAIN_LATER,
            Self::RateLimited => CloseCode::RATE_LIMITED,
            Self::ProtocolViolation => CloseCode::PROTOCOL_ERROR,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidFrame => "invalid_frame",
            Self::BadTopic => "bad_topic",
            Self::TooManyTopics => "too_many_topics",
            Self::FrameTooLarge => "frame_too_large",
            Self::BinaryNotSupported => "binary_not_supported",
            Self::TopicLimit => "topic_limit",
            Self::RateLimited => "rate_limited",
            Self::ProtocolViolation => "protocol_violation",
            Self::Other => "other",
        }
    }
}
