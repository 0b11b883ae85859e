//! Hostile rows: http. See `main.rs` for what every row must keep true.

#[allow(unused_imports)]
use crate::Bystander;
