//! Ringside protocol v1: every type that crosses a process boundary, and its codec.
//!
//! This crate holds no I/O and no runtime: it is shared by the gateway (server side of the
//! WebSocket), the control plane (admin API), the Rust client and the load tool, so that all of
//! them agree on one definition of each message.
//!
//! - [`names`]: validated identifiers: [`EventId`], [`Topic`], [`Stage`].
//! - [`state`]: [`EventState`], the versioned state message of one event, and its [`Payload`].
//! - [`frame`]: WebSocket frames, [`ClientFrame`] (device → server) and [`ServerFrame`]
//!   (server → device), with a decoder that tells invalid JSON, schema errors and policy
//!   violations apart so the gateway can answer each with the right close code.
//! - [`close`]: the closed set of error codes and the WebSocket close code each maps to.
//! - [`admin`]: request and response bodies of the admin API.
//! - [`priority`]: the priority classes of requests and published messages.
//!
//! `docs/PROTOCOL.md` at the repository root is the prose version of this crate.

pub mod admin;
pub mod close;
pub mod frame;
pub mod names;
pub mod priority;
pub mod state;

pub use close::{CloseCode, ErrorCode};
pub use frame::{ClientFrame, DecodeError, ServerFrame, SubscribeTopic};
pub use names::{EventId, NameError, Stage, Topic};
pub use priority::{PRIORITY_HEADER, Priority};
pub use state::{EventState, Payload, PayloadError, json_nesting, unix_now_ms};

/// The protocol version announced in `welcome` frames.
pub const PROTOCOL_VERSION: u32 = 1;
