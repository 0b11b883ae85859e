//! `GET /v1/admin/protection` and `PUT /v1/admin/protection`, behind the admin token like every
//! admin route.
//!
//! - `GET` answers the [`ProtectionStatus`] of the process that answers: whether protection
//!   limits and sheds, the ruleset's mode, whether it is active now and why, until when, the
//!   adaptive limit, requests in flight, the shares in force and the shed counts per class.
//! - `PUT` takes a [`ProtectionUpdate`] (`{"ruleset":"auto"|"on"|"off"}` and/or
//!   `{"protection":"on"|"off"}`), applies it to this process, and with Redis configured also
//!   records the fields it sets (and only those) under the deployment's key prefix
//!   ([`FleetSetting`]), which every process polls: the whole fleet follows within a poll
//!   interval. It answers the new status.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use ringside_protection::Protection;
use ringside_protocol::admin::{ProtectionStatus, ProtectionUpdate};

use crate::body::parse_json;
use crate::{ControlError, ControlPlane};

/// What the admin API needs of protection: the process's state, and the fleet-wide setting
/// when Redis is configured.
#[derive(Debug, Clone)]
pub struct ProtectionControl {
    pub protection: Arc<Protection>,
    pub fleet: Option<FleetSetting>,
}

/// The protection settings operators put, in a Redis hash under `<prefix>protection` (fields
/// `ruleset` and `protection`), shared by every process of a deployment. Each field holds
/// until the next `PUT` of it (no expiry: a restarted process follows it too, over its flags).
#[derive(Clone)]
pub struct FleetSetting {
    connection: redis::aio::ConnectionManager,
    key: String,
}

impl std::fmt::Debug for FleetSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetSetting")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl FleetSetting {
    pub fn new(connection: redis::aio::ConnectionManager, prefix: &str) -> Self {
        Self {
            connection,
            key: format!("{prefix}protection"),
        }
    }

    /// Records the fields `update` sets, and only those: a `PUT` of the ruleset alone leaves
    /// the fleet's protection mode as it was (a Redis hash, one field per setting).
    pub async fn write(&self, update: &ProtectionUpdate) -> Result<(), redis::RedisError> {
        let mut command = redis::cmd("HSET");
        command.arg(&self.key);
        if let Some(ruleset) = update.ruleset {
            command.arg("ruleset").arg(setting_text(&ruleset));
        }
        if let Some(protection) = update.protection {
            command.arg("protection").arg(setting_text(&protection));
        }
        if update.ruleset.is_none() && update.protection.is_none() {
            return Ok(());
        }
        let mut connection = self.connection.clone();
        command.query_async::<()>(&mut connection).await
    }

    /// The settings operators put, field by field (`None` for a field nobody put, or one
    /// that does not decode).
    pub async fn read(&self) -> Result<ProtectionUpdate, redis::RedisError> {
        let mut connection = self.connection.clone();
        let (ruleset, protection): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(&self.key)
            .arg("ruleset")
            .arg("protection")
            .query_async(&mut connection)
            .await?;
        Ok(ProtectionUpdate {
            ruleset: ruleset.and_then(setting_of),
            protection: protection.and_then(setting_of),
        })
    }
}

/// A mode from its text, `None` when it does not decode.
fn setting_of<T: serde::de::DeserializeOwned>(text: String) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(text)).ok()
}

/// A mode as its JSON string (`"on"`, `"auto"`…), without the quotes.
fn setting_text<T: serde::Serialize>(mode: &T) -> String {
    match serde_json::to_value(mode) {
        Ok(serde_json::Value::String(text)) => text,
        _ => unreachable!("protection modes encode as strings"),
    }
}

impl ControlPlane {
    /// Serves `/v1/admin/protection` with `control` (without it, that route answers 404).
    pub fn with_protection(self: Arc<Self>, control: ProtectionControl) -> Arc<Self> {
        if self.protection.set(control).is_err() {
            tracing::warn!("the control plane's protection was already set; keeping the first");
        }
        self
    }

    fn protection_control(&self) -> Result<&ProtectionControl, ControlError> {
        self.protection
            .get()
            .ok_or_else(|| ControlError::NotFound("protection is not configured here".into()))
    }
}

pub(crate) async fn get_protection(
    State(control): State<Arc<ControlPlane>>,
) -> Result<Response, ControlError> {
    let status: ProtectionStatus = control.protection_control()?.protection.status();
    Ok(axum::Json(status).into_response())
}

pub(crate) async fn put_protection(
    State(control): State<Arc<ControlPlane>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ControlError> {
    let handle = control.protection_control()?;
    let update: ProtectionUpdate = parse_json(&body)?;
    if update.ruleset.is_none() && update.protection.is_none() {
        return Err(ControlError::invalid(
            "ruleset",
            "set ruleset (auto, on or off) and/or protection (on or off)",
        ));
    }
    handle.protection.apply(update);
    if let Some(fleet) = &handle.fleet
        && let Err(error) = fleet.write(&update).await
    {
        tracing::warn!(%error, "could not share the protection setting with the fleet");
        return Err(ControlError::StoreUnavailable);
    }
    tracing::info!(?update, "protection settings put by an operator");
    Ok(axum::Json(handle.protection.status()).into_response())
}
