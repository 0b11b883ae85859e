//! `GET /v1/admin/protection` and `PUT /v1/admin/protection`, behind the admin token like every
//! admin route.
//!
//! - `GET` answers the [`ProtectionStatus`] of the process that answers: whether protection
//!   limits and sheds, the ruleset's mode, whether it is active now and why, until when, the
//!   adaptive limit, requests in flight, the shares in force and the shed counts per class.
//! - `PUT` takes a [`ProtectionUpdate`] (`{"ruleset":"auto"|"on"|"off"}` and/or
//!   `{"protection":"on"|"off"}`), applies it to this process, and with Redis configured also
//!   writes the resulting settings under the deployment's key prefix ([`FleetSetting`]), which
//!   every process polls: the whole fleet follows within a poll interval. It answers the new
//!   status.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use protection::Protection;
use protocol::admin::{ProtectionStatus, ProtectionUpdate};

use crate::body::parse_json;
use crate::{ControlError, ControlPlane};

/// What the admin API needs of protection: the process's state, and the fleet-wide setting
/// when Redis is configured.
#[derive(Debug, Clone)]
pub struct ProtectionControl {
    pub protection: Arc<Protection>,
    pub fleet: Option<FleetSetting>,
}

/// The protection settings an operator last put, in Redis under `<prefix>protection`, shared
/// by every process of a deployment. It holds until the next `PUT` (it has no expiry: a
/// restarted process follows it too).
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

    pub async fn write(&self, settings: &ProtectionUpdate) -> Result<(), redis::RedisError> {
        let json = serde_json::to_string(settings)
            .unwrap_or_else(|_| unreachable!("protection settings always encode"));
        let mut connection = self.connection.clone();
        redis::cmd("SET")
            .arg(&self.key)
            .arg(json)
            .query_async::<()>(&mut connection)
            .await
    }

    /// The settings last put, `None` when nobody put any (or the value does not decode).
    pub async fn read(&self) -> Result<Option<ProtectionUpdate>, redis::RedisError> {
        let mut connection = self.connection.clone();
        let json: Option<String> = redis::cmd("GET")
            .arg(&self.key)
            .query_async(&mut connection)
            .await?;
        Ok(json.and_then(|json| serde_json::from_str(&json).ok()))
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
    if let Some(fleet) = &handle.fleet {
        if let Err(error) = fleet.write(&handle.protection.settings()).await {
            tracing::warn!(%error, "could not share the protection setting with the fleet");
            return Err(ControlError::StoreUnavailable);
        }
    }
    tracing::info!(?update, "protection settings put by an operator");
    Ok(axum::Json(handle.protection.status()).into_response())
}
