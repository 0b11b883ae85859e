//! The admin API, typed.

use ringside_protocol::admin::{
    ApiError, ApiErrorCode, BroadcastList, BroadcastReport, CreateEvent, EventList, EventSummary,
    PublishReceipt, PublishRequest, Stats, UpdateEvent,
};
use ringside_protocol::{EventId, Priority};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ClientError;
use crate::http::{HttpResponse, call_within};

/// What a publish may ask for beyond its stage and payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PublishOptions {
    /// The lane: `critical` (a stage state, the server's default) or `best_effort`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// The follow-up fetch window of the state, instead of the control plane's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch_within_ms: Option<u64>,
}

/// The publish body: the request and its options side by side.
#[derive(Serialize)]
struct PublishBody<'a> {
    #[serde(flatten)]
    request: &'a PublishRequest,
    #[serde(flatten)]
    options: PublishOptions,
}

/// How long an admin call waits for its whole answer unless told otherwise: a publish waits
/// at most the Kafka publish timeout (5 s by default, 20 s at most) on the server.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Calls the admin API of one control-plane address with the admin token.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    bearer: String,
    timeout: std::time::Duration,
}

impl AdminClient {
    /// `base` is `http://host:port`; each call waits at most [`DEFAULT_TIMEOUT`].
    pub fn new(base: impl Into<String>, admin_token: &str) -> Self {
        Self {
            base: base.into(),
            bearer: format!("Bearer {admin_token}"),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client, each call given up after `timeout` (`ClientError::Timeout`).
    #[must_use]
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let response = call_within(
            self.timeout,
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

    /// Publishes with [`PublishOptions`]: a lane, an operator-set follow-up fetch window.
    pub async fn publish_with(
        &self,
        event: &EventId,
        request: &PublishRequest,
        options: PublishOptions,
    ) -> Result<PublishReceipt, ClientError> {
        let body = serde_json::to_vec(&PublishBody { request, options })
            .map_err(|e| ClientError::Http(e.to_string()))?;
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

    /// `PATCH /v1/admin/events/{id}`: replaces the fields `update` sets.
    pub async fn update_event(
        &self,
        event: &EventId,
        update: &UpdateEvent,
    ) -> Result<EventSummary, ClientError> {
        let body = serde_json::to_vec(update).map_err(|e| ClientError::Http(e.to_string()))?;
        self.call("PATCH", &format!("/v1/admin/events/{event}"), Some(body))
            .await
    }

    /// The broadcasts of `event` the nodes keep records of, newest first.
    pub async fn broadcasts(&self, event: &EventId) -> Result<BroadcastList, ClientError> {
        self.call("GET", &format!("/v1/admin/events/{event}/broadcasts"), None)
            .await
    }

    /// The delivery report of `version` of `event`.
    pub async fn broadcast(
        &self,
        event: &EventId,
        version: u64,
    ) -> Result<BroadcastReport, ClientError> {
        self.call(
            "GET",
            &format!("/v1/admin/events/{event}/broadcasts/{version}"),
            None,
        )
        .await
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

#[cfg(test)]
mod tests {
    use super::*;
    use ringside_protocol::{Payload, Stage};

    fn body(options: PublishOptions) -> String {
        let request = PublishRequest {
            stage: Stage::parse("LIVE").expect("stage"),
            payload: Payload::parse(r#"{"a":1}"#).expect("payload"),
        };
        serde_json::to_string(&PublishBody {
            request: &request,
            options,
        })
        .expect("serializable")
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_given_up_after_the_timeout() {
        // Accepts (the kernel does, into the backlog) and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", silent.local_addr().expect("address"));
        let timeout = std::time::Duration::from_millis(200);
        let admin = AdminClient::new(base, "token").with_timeout(timeout);
        match admin.stats().await {
            Err(ClientError::Timeout) => {}
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn options_sit_beside_the_request_and_are_left_out_when_unset() {
        assert_eq!(
            body(PublishOptions::default()),
            r#"{"stage":"LIVE","payload":{"a":1}}"#
        );
        assert_eq!(
            body(PublishOptions {
                priority: Some(Priority::BestEffort),
                fetch_within_ms: Some(3000),
            }),
            r#"{"stage":"LIVE","payload":{"a":1},"priority":"best_effort","fetch_within_ms":3000}"#
        );
    }
}
