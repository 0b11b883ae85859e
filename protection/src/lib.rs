//! Protection of a node under overload: what it refuses, when, and how it tells clients to come
//! back.
//!
//! - [`retry_after`]: the jittered `Retry-After` every refusal carries, so that the clients a
//!   node turned away do not all return at the same instant.

pub mod retry;

pub use retry::{RetryAfter, retry_after};
