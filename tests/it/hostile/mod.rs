//! The hostile-input matrix: every row is one thing a hostile client does, with the documented
//! answer it must get (an HTTP status and error code, a GraphQL `extensions.code`, or a
//! WebSocket close code), and after every row a device that stayed connected throughout must
//! still get the next publish promptly and the node must still answer `/healthz`.
//!
//! - [`ws`]: WebSocket frames and connections.
//! - [`graphql`]: prefetch GraphQL requests.
//! - [`http`]: the admin API and the HTTP layer under every endpoint.

mod graphql;
mod http;
pub(crate) mod raw_ws;
mod ws;

use crate::support::{TestServer, next_state, subscribe};
use ringside_client::DeviceConnection;
use ringside_protocol::EventId;

/// A well-behaved device that stays connected while the hostile rows run, and the event it
/// follows. After each row, [`Bystander::assert_unharmed`] proves the node still serves it.
pub(crate) struct Bystander {
    pub(crate) event: EventId,
    device: DeviceConnection,
}

impl Bystander {
    /// Creates `event` on `server`, connects a device and subscribes it.
    pub(crate) async fn join(server: &TestServer, event: &str) -> Self {
        let event = server.create_event(event).await;
        // `connect` has already read the welcome.
        let mut device = server.device_named("bystander").await;
        subscribe(&mut device, &[(event.topic(), 0)]).await;
        Self { event, device }
    }

    /// Publishes the next state and asserts the bystander gets exactly it, promptly (within
    /// [`support::PROMPTLY`], a bound that only catches a frozen node), and that `/healthz`
    /// answers 200. `row` names the hostile row in the failure message.
    pub(crate) async fn assert_unharmed(&mut self, server: &TestServer, row: &str) {
        let receipt = server.publish(&self.event, "LIVE", "{}").await;
        let state = next_state(&mut self.device).await;
        assert_eq!(
            state.version, receipt.version,
            "after row {row:?} the bystander got another version"
        );
        let health = ringside_client::http::call(&server.base, "GET", "/healthz", &[], None)
            .await
            .unwrap_or_else(|error| panic!("after row {row:?} /healthz failed: {error}"));
        assert_eq!(health.status, 200, "after row {row:?} /healthz answered");
    }
}
