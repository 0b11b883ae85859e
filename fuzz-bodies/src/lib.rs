//! The bodies of Ringside's fuzz targets: one function per decoder of untrusted bytes, each
//! calling the production entry point the way production calls it, on arbitrary bytes.
//!
//! Two callers share them, so that what the fuzzer explores and what every test run replays are
//! the same code:
//! - `fuzz/` (outside the workspace, so the normal build never compiles AFL++) wraps each body
//!   in `afl::fuzz!` for coverage-guided runs: `scripts/fuzz`.
//! - `tests/` in this crate replays every file of `fuzz/corpus/<target>/` and
//!   `fuzz/regressions/<target>/` through the same body, plus a short proptest per body, in the
//!   default `cargo nextest run --workspace`.
//!
//! A body returns normally for every input: decoders answer `Ok` or a typed error. A panic (or
//! an abort, such as a stack overflow) is a finding. Where a decoded value can be checked
//! cheaply, the body also asserts that it encodes back to what it was decoded from.
//!
//! Targets, by the surface their bytes arrive on:
//! - [`client_frame`]: a WebSocket text frame from a device.
//! - [`admin_body`]: an admin API request body (create event, publish).
//! - [`device_token`]: the device token of `/v1/ws` and `/graphql`; [`admin_token`]: the
//!   admin `Authorization` header.
//! - [`graphql_query`]: the GraphQL parser and the query limit checker.
//! - [`page_blob`]: a materialized page read back from Redis.
//! - [`kafka_record`]: a record read from the tier-1 Kafka topic.

use std::sync::OnceLock;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use ringside_auth::{AdminToken, DeviceTokenKey};
use ringside_prefetch::catalog::Catalog;
use ringside_prefetch::generate::{DatasetSize, generate};
use ringside_prefetch::limits::QueryLimits;
use ringside_prefetch::materialize::{self, EventPool, EventSpec};
use ringside_protocol::admin::CreateEvent;
use ringside_protocol::{ClientFrame, Payload};
use sha2::Sha256;

/// One fuzz target: its name (the folder under `fuzz/corpus/` and `fuzz/regressions/`) and its
/// body.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub body: fn(&[u8]),
}

/// Every target, in the order `scripts/fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "client_frame",
        body: client_frame,
    },
    Target {
        name: "admin_body",
        body: admin_body,
    },
    Target {
        name: "device_token",
        body: device_token,
    },
    Target {
        name: "admin_token",
        body: admin_token,
    },
    Target {
        name: "graphql_query",
        body: graphql_query,
    },
    Target {
        name: "page_blob",
        body: page_blob,
    },
    Target {
        name: "kafka_record",
        body: kafka_record,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().copied().find(|target| target.name == name)
}

/// A WebSocket text frame: tungstenite hands the session only valid UTF-8 (anything else ends
/// the connection with `invalid_json` before decoding), then [`ClientFrame::decode`] runs. A
/// decoded frame must encode back to an equal frame.
pub fn client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientFrame::decode(text) {
        Ok(frame) => {
            let again = ClientFrame::decode(&frame.encode());
            assert_eq!(again.as_ref(), Ok(&frame), "a decoded frame re-encodes");
        }
        Err(error) => {
            let _close_code = error.code().close_code();
            let _message = error.to_string();
        }
    }
}

/// An admin request body, decoded as the create-event and the publish handlers decode it:
/// [`ringside_control::body::parse_json`], then [`ringside_control::body::validate_event`] or
/// [`Payload::from_raw`].
pub fn admin_body(data: &[u8]) {
    let body: Result<Bytes, BytesRejection> = Ok(Bytes::copy_from_slice(data));
    match ringside_control::body::parse_json::<CreateEvent>(&body) {
        Ok(event) => {
            let _verdict =
                ringside_control::body::validate_event(&event).map_err(|e| e.to_api_error());
        }
        Err(error) => {
            let _answer = error.to_api_error();
        }
    }
    match ringside_control::body::parse_json::<ringside_control::body::PublishBody>(&body) {
        Ok(request) => {
            if let Some(raw) = request.payload {
                let _payload = Payload::from_raw(raw);
            }
        }
        Err(error) => {
            let _answer = error.to_api_error();
        }
    }
}

/// The device-token secret of the targets (any secret of the accepted length would do).
const DEVICE_SECRET: &[u8] = b"fuzz-device-token-secret-0123456789abcdef";
/// The admin token of the targets.
const ADMIN_TOKEN: &str = "fuzz-admin-token-0123456789abcdef0123456789";
/// The clock the device tokens are verified at, in seconds since the Unix epoch.
const NOW_S: u64 = 1_800_000_000;

fn device_key() -> &'static DeviceTokenKey {
    static KEY: OnceLock<DeviceTokenKey> = OnceLock::new();
    KEY.get_or_init(|| {
        DeviceTokenKey::new(DEVICE_SECRET)
            .unwrap_or_else(|_| unreachable!("the fuzz secret is long enough"))
    })
}

/// `base64url(header).base64url(claims).signature`, signed with the targets' secret, so that a
/// fuzzer that cannot forge HMACs still reaches the claims decoding behind the signature check.
fn signed_token(header: &[u8], claims: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(DEVICE_SECRET)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// [`DeviceTokenKey::verify`]. The first byte picks what the rest is:
/// - `0` (or any byte but 1 and 2): the token text as a device presents it;
/// - `1`: claims JSON, sent with the HS256 header and a valid signature;
/// - `2`: header JSON, a newline, claims JSON, with a valid signature.
///
/// Accepted claims must hold what `verify` promises.
pub fn device_token(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        let _refused = device_key().verify("", NOW_S);
        return;
    };
    let token = match mode {
        1 => signed_token(br#"{"alg":"HS256","typ":"JWT"}"#, rest),
        2 => {
            let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let (header, claims) = rest.split_at(split);
            signed_token(header, claims.get(1..).unwrap_or_default())
        }
        _ => match std::str::from_utf8(rest) {
            Ok(text) => text.to_owned(),
            Err(_) => return,
        },
    };
    match device_key().verify(&token, NOW_S) {
        Ok(claims) => {
            assert!(claims.exp > NOW_S, "an accepted token has not expired");
            assert!(
                !claims.sub.is_empty() && claims.sub.len() <= ringside_auth::ID_MAX_BYTES,
                "an accepted token names its device"
            );
            assert!(
                !claims.profile.is_empty() && claims.profile.len() <= ringside_auth::ID_MAX_BYTES,
                "an accepted token names its profile"
            );
        }
        Err(error) => {
            let _message = error.to_string();
        }
    }
}

/// The admin `Authorization` header: [`ringside_auth::bearer_token`], then [`AdminToken::matches`],
/// which must accept exactly the configured token.
pub fn admin_token(data: &[u8]) {
    static TOKEN: OnceLock<AdminToken> = OnceLock::new();
    let token = TOKEN.get_or_init(|| {
        AdminToken::new(ADMIN_TOKEN).unwrap_or_else(|_| unreachable!("the fuzz token is long"))
    });
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(presented) = ringside_auth::bearer_token(header) {
        assert_eq!(
            token.matches(presented),
            presented == ADMIN_TOKEN,
            "the admin token matches only itself"
        );
    }
}

/// The limits `/graphql` runs with by default.
fn query_limits() -> QueryLimits {
    QueryLimits::default()
}

/// The GraphQL entry of `/graphql`: parse, then check the limits. The one place the targets
/// call it, so that a change of the entry point is a change of this function only.
pub fn parse_and_check(query: &str, limits: QueryLimits) -> Result<(), String> {
    ringside_prefetch::limits::parse_and_check(query, &limits)
        .map(drop)
        .map_err(|error| error.to_string())
}

/// A query text as `/graphql` receives it (the request's JSON or query string already decoded
/// it to a string), through [`parse_and_check`].
pub fn graphql_query(data: &[u8]) {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let _verdict = parse_and_check(query, query_limits());
}

/// The catalog and event pool the page blobs are decoded against: a small generated dataset,
/// built once per process.
fn page_pool() -> &'static EventPool {
    static POOL: OnceLock<EventPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let dataset = generate(DatasetSize {
            titles: 400,
            profiles: 20,
            seed: 11,
        });
        let event = dataset
            .events
            .first()
            .map(|event| (event.id.clone(), event.stages.clone()))
            .unwrap_or_else(|| unreachable!("generated datasets have events"));
        let catalog = Catalog::build(dataset.titles, dataset.profiles, dataset.events)
            .unwrap_or_else(|_| unreachable!("generated datasets are valid"));
        let spec = EventSpec::from_catalog(&catalog, &event.0, event.1);
        EventPool::new(&catalog, spec)
    })
}

/// A materialized page as read back from the page store (Redis shares these bytes between
/// prefetch nodes): [`materialize::fingerprint_of`], then [`materialize::decode`]. A decoded
/// page must encode back to the same bytes.
pub fn page_blob(data: &[u8]) {
    let pool = page_pool();
    let _fingerprint = materialize::fingerprint_of(data);
    if let Ok(page) = materialize::decode(data, pool) {
        assert_eq!(
            materialize::encode(&page, pool),
            data,
            "a decoded page re-encodes to its blob"
        );
    }
}

/// A record value read from the Kafka topic: [`ringside_kafka::decode_record`]. A decoded state must
/// encode back to an equal state.
pub fn kafka_record(data: &[u8]) {
    if let Ok(state) = ringside_kafka::decode_record(Some(data)) {
        let encoded =
            serde_json::to_vec(&state).unwrap_or_else(|_| unreachable!("states always encode"));
        let again =
            ringside_kafka::decode_record(Some(&encoded)).map_err(|error| error.to_string());
        assert_eq!(again.as_ref(), Ok(&state), "a decoded state re-encodes");
    }
}

/// The folder of the repository's `fuzz/` tree (corpora and regressions).
pub fn fuzz_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fuzz")
}
