//! Decoding of admin request bodies: the bytes an operator sends, turned into typed requests or
//! a [`ControlError`] that names the offending field. Kept apart from the routes in
//! [`crate::api`] so that the fuzz targets can call exactly what the handlers call.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use ringside_protocol::admin::CreateEvent;
use ringside_protocol::{Priority, Stage};
use serde::Deserialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ControlError;
use crate::api::{ADMIN_BODY_MAX_BYTES, STAGES_MAX, TITLE_MAX_CHARS};

/// Reads a JSON body; errors name the offending field.
pub fn parse_json<'a, T: Deserialize<'a>>(
    body: &'a Result<Bytes, BytesRejection>,
) -> Result<T, ControlError> {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ControlError::PayloadTooLarge(format!(
                "request body exceeds {ADMIN_BODY_MAX_BYTES} bytes"
            )));
        }
        Err(rejection) => {
            return Err(ControlError::InvalidRequest {
                field: None,
                message: rejection.body_text(),
            });
        }
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if path == "." || path.is_empty() {
            ControlError::InvalidRequest {
                field: None,
                message: format!("invalid JSON body: {inner}"),
            }
        } else {
            ControlError::invalid(path.clone(), format!("{path}: {inner}"))
        }
    })
}

/// Checks a decoded create-event body against the limits of an event.
pub fn validate_event(event: &CreateEvent) -> Result<(), ControlError> {
    let title_chars = event.title.trim().chars().count();
    if title_chars == 0 || title_chars > TITLE_MAX_CHARS {
        return Err(ControlError::invalid(
            "title",
            format!("title: must be 1 to {TITLE_MAX_CHARS} characters"),
        ));
    }
    if OffsetDateTime::parse(&event.starts_at, &Rfc3339).is_err() {
        return Err(ControlError::invalid(
            "starts_at",
            "starts_at: must be an RFC 3339 timestamp such as 2026-12-01T20:00:00Z",
        ));
    }
    if event.stages.is_empty() || event.stages.len() > STAGES_MAX {
        return Err(ControlError::invalid(
            "stages",
            format!("stages: must list 1 to {STAGES_MAX} stages"),
        ));
    }
    for (index, stage) in event.stages.iter().enumerate() {
        if event.stages[..index].contains(stage) {
            return Err(ControlError::invalid(
                "stages",
                format!("stages: {stage} is listed twice"),
            ));
        }
    }
    Ok(())
}

/// The publish body, with the payload kept raw so that its size decides 413 versus 400.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    pub stage: Stage,
    #[serde(default)]
    pub payload: Option<Box<RawValue>>,
    /// `critical` (a stage state, the default) or `best_effort` (an extra message in a lane
    /// of its own: a viewer count, a score ticker).
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Overrides the follow-up fetch window the control plane would set for this state.
    #[serde(default)]
    pub fetch_within_ms: Option<u64>,
}
