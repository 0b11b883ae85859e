//! The admin API, typed.

use protocol::EventId;
use protocol::admin::{
    ApiError, ApiErrorCode, CreateEvent, EventList, EventSummary, PublishReceipt, PublishRequest,
    Stats,
};
use serde::de::DeserializeOwned;

use crate::ClientError;
use crate::http::{HttpResponse, call};

/// Calls the admin API of one control-plane address with the admin token.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    bearer: String,
}

impl AdminClient {
    /// `base` is `http://host:port`.
    pub fn new(base: impl Into<String>, admin_token: &str) -> Self {
        Self {
            base: base.into(),
            bearer: format!("Bearer {admin_token}"),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let response = call(
            &self.base,
            method,
            path,
            &[("authorization", &self.bearer)],
            body,
        )
        .await?;
        decode(&response)
    }

    pub async fn create_event(&self, event: &CreateEvent) -> Result<EventSummary, ClientError> {
        let body = serde_json::to_vec(event).map_err(|e| ClientError::Http(e.to_string()))?;
        self.call("POST", "/v1/admin/events", Some(body)).await
    }

    pub async fn list_events(&self) -> Result<Vec<EventSummary>, ClientError> {
        Ok(self
            .call::<EventList>("GET", "/v1/admin/events", None)
            .await?
            .events)
    }

    pub async fn publish(
        &self,
        event: &EventId,
        request: &PublishRequest,
    ) -> Result<PublishReceipt, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Http(e.to_string()))?;
        self.call(
            "POST",
            &format!("/v1/admin/events/{event}/publish"),
            Some(body),
        )
        .await
    }

    pub async fn stats(&self) -> Result<Stats, ClientError> {
        self.call("GET", "/v1/admin/stats", None).await
    }
}

/// A 2xx answer's JSON body, or the API error it carries.
pub fn decode<T: DeserializeOwned>(response: &HttpResponse) -> Result<T, ClientError> {
    if (200..300).contains(&response.status) {
        return serde_json::from_slice(&response.body)
            .map_err(|e| ClientError::Http(e.to_string()));
    }
    let error = serde_json::from_slice(&response.body)
        .unwrap_or_else(|_| ApiError::new(ApiErrorCode::Internal, response.text()));
    Err(ClientError::Api {
        status: response.status,
        error,
    })
}
