//! The closed set of error codes a device can see, and how each ends the connection.

use serde::{Deserialize, Serialize};

/// WebSocket close codes Ringside sends (RFC 6455 section 7.4.1), each listed in
/// `docs/PROTOCOL.md`, "Errors and close codes". Which ending uses which:
///
/// | ending (`gateway/src/session.rs`) | code |
/// |---|---|
/// | drain or shutdown, maximum lifetime: after the goaway and its grace | [`GOING_AWAY`](Self::GOING_AWAY) 1001 |
/// | heartbeat timeout (goaway first) | [`GOING_AWAY`](Self::GOING_AWAY) 1001 |
/// | idle (no topic held), token expired (goaway first) | [`POLICY_VIOLATION`](Self::POLICY_VIOLATION) 1008 |
/// | slow consumer (goaway first, if it can still be written) | [`SLOW_CONSUMER`](Self::SLOW_CONSUMER) 4008 |
/// | a bad client frame (`error` frame first) | [`ErrorCode::close_code`] |
///
/// The server never closes with 1000 (normal closure) or 1011 (internal error): a planned end
/// is a goaway and 1001, and a failure inside the node drops the connection without a close
/// frame, which the device handles like any lost connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// A planned end: the node drains or shuts down, or the connection reached its maximum
    /// lifetime (both after a goaway and its grace period), or the device was silent for
    /// `heartbeat_misses` heartbeat intervals (after a goaway).
    pub const GOING_AWAY: Self = Self(1001);
    /// The peer broke the WebSocket protocol itself.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// A frame was not valid JSON or did not match the schema.
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// A policy was broken: a frame that was valid but refused (bad topic, too many topics),
    /// or, after a goaway, a connection that held no topic for the subscribe timeout (`idle`)
    /// or whose device token expired (`token_expired`).
    pub const POLICY_VIOLATION: Self = Self(1008);
    /// A frame was larger than the configured limit.
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    /// The node holds its budget of topics without a state (`topic_limit`); subscribe again
    /// later.
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
