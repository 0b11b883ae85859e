//! The binary's commands, one module per group, and the flag groups they share.

pub(crate) mod args;
pub(crate) mod content;
pub(crate) mod ops;
pub(crate) mod serve;
