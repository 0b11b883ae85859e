//! The prefetch GraphQL service over real HTTP, with the machine's real Redis where a test
//! needs one (each test under its own key prefix, removed at the end).

use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};

const FULL_PREFETCH: &str = r#"{
  prefetch {
    profileId
    cacheHint { ttlSeconds events { eventId version } }
    events {
      id topic title stages builtForVersion
      state { topic version stage publishedAtMs payload }
      byStage {
        stage
        home { billboard { id title artwork(sizes: [BILLBOARD]) { size url width height } }
               rows { id kind title cards { id title genres maturity runtimeMinutes artwork(sizes: [POSTER_SMALL]) { url } } } }
        eventPage { hero { id } rows { kind cards { id } } }
      }
    }
  }
}"#;

fn token(profile: &str) -> String {
    profile_token(&format!("dev-{profile}"), profile, 3600)
}

/// A server whose prefetch pages live in the machine's Redis, under keys of its own.
async fn server_on_redis(test: &str) -> (TestServer, RedisKeys) {
    let keys = RedisKeys::new(test);
    let (url, prefix) = (keys.url.clone(), keys.prefix.clone());
    let server = TestServer::start_with_prefetch(|setup| {
        setup.store = ringside::content::StoreSetup::Redis { url, prefix };
    })
    .await;
    (server, keys)
}

fn error_code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| {
            let text = body.to_string();
            panic!("no error code in {}", &text[..text.len().min(300)])
        })
}

#[tokio::test]
async fn prefetch_returns_every_stage_of_every_visible_event_for_the_profile() {
    let (server, keys) = server_on_redis("every-stage").await;
    let (response, body) = server
        .graphql(&token("p000001"), json!({ "query": FULL_PREFETCH }))
        .await;
    assert_eq!(response.status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    let prefetch = &body["data"]["prefetch"];
    assert_eq!(prefetch["profileId"], "p000001");
    let events = prefetch["events"].as_array().unwrap();
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    for id in [
        "fight-night",
        "championship-final",
        "awards-gala",
        "season-premiere",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    for event in events {
        let stages: Vec<&str> = event["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        let by_stage: Vec<&str> = event["byStage"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stage"].as_str().unwrap())
            .collect();
        assert_eq!(stages, by_stage, "content for every stage, in order");
        for stage in event["byStage"].as_array().unwrap() {
            let rows = stage["home"]["rows"].as_array().unwrap();
            assert!(rows.len() >= 4, "{stage}");
            assert!(
                rows.iter()
                    .all(|r| r["cards"].as_array().unwrap().len() == 8)
            );
            let url = stage["home"]["billboard"]["artwork"][0]["url"]
                .as_str()
                .unwrap();
            assert!(url.ends_with("billboard.jpg"), "{url}");
            assert_eq!(stage["eventPage"]["rows"][0]["kind"], "EVENT");
        }
        assert_eq!(event["state"], Value::Null, "nothing published yet");
    }
    // The cache hint: in the data, in the extensions, and as the HTTP cache lifetime.
    let ttl = prefetch["cacheHint"]["ttlSeconds"].as_u64().unwrap();
    assert!((1440..=2160).contains(&ttl), "{ttl}");
    assert_eq!(
        body["extensions"]["cacheHint"]["ttlSeconds"].as_u64(),
        Some(ttl)
    );
    assert_eq!(
        response.headers["cache-control"],
        format!("private, max-age={ttl}").as_str()
    );
    assert!(keys.count().await >= 4, "pages were stored in Redis");
    server.stop().await;
}

/// Devices that fetch together get TTLs spread over the jitter window; one device gets the
/// same TTL every time, so its answer for unchanged content stays the same bytes.
#[tokio::test]
async fn device_cache_ttls_are_jittered_per_device() {
    let server = TestServer::start().await;
    let ttl_of = |device: String| {
        let server = &server;
        async move {
            let token = profile_token(&device, "p000002", 3600);
            let query = json!({ "query": "{ prefetch { cacheHint { ttlSeconds } } }" });
            let (_, body) = server.graphql(&token, query).await;
            body["data"]["prefetch"]["cacheHint"]["ttlSeconds"]
                .as_u64()
                .unwrap()
        }
    };
    let mut ttls = Vec::new();
    for device in 0..20 {
        ttls.push(ttl_of(format!("tv-{device}")).await);
    }
    assert!(ttls.iter().all(|t| (1440..=2160).contains(t)), "{ttls:?}");
    assert_eq!(ttl_of("tv-3".into()).await, ttls[3], "one device, one TTL");
    ttls.sort_unstable();
    ttls.dedup();
    assert!(
        ttls.len() > 10,
        "devices that fetch together must not expire together: {ttls:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_state_in_a_prefetch_is_the_state_the_websocket_sends() {
    let (server, _keys) = server_on_redis("state").await;
    let event = ringside_protocol::EventId::parse("fight-night").unwrap();
    let mut device = server.device().await;
    subscribe(&mut device, &[(event.topic(), 0)]).await;
    server
        .publish(&event, "LIVE", r#"{"round": 3, "hero": "main-card"}"#)
        .await;
    let ws = next_state(&mut device).await;

    let query = r#"{ event(id: "fight-night") { builtForVersion state { topic version stage publishedAtMs payload } } }"#;
    let (_, body) = server
        .graphql(&token("p000003"), json!({ "query": query }))
        .await;
    let state = &body["data"]["event"]["state"];
    assert_eq!(state["topic"], ws.topic.as_str());
    assert_eq!(state["version"].as_u64(), Some(ws.version));
    assert_eq!(state["stage"], ws.stage.as_str());
    assert_eq!(state["publishedAtMs"].as_u64(), Some(ws.published_at_ms));
    assert_eq!(
        state["payload"],
        serde_json::from_str::<Value>(ws.payload.as_json()).unwrap()
    );
    assert_eq!(
        body["data"]["event"]["builtForVersion"].as_u64(),
        Some(ws.version)
    );
    assert_eq!(
        body["extensions"]["cacheHint"]["events"][0]["version"].as_u64(),
        Some(ws.version)
    );

    // Once an event reaches its last stage it leaves the prefetch.
    server.publish(&event, "ENDED", "{}").await;
    let (_, body) = server
        .graphql(
            &token("p000003"),
            json!({ "query": "{ prefetch { events { id } } }" }),
        )
        .await;
    let ids: Vec<&str> = body["data"]["prefetch"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert!(!ids.contains(&"fight-night"), "{ids:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_profile_reads_only_its_own_data() {
    let (server, _keys) = server_on_redis("isolation").await;
    let query =
        r#"{ prefetch { profileId events { id byStage { home { rows { cards { id } } } } } } }"#;
    let (_, mine) = server
        .graphql(&token("p000010"), json!({ "query": query }))
        .await;
    let (_, theirs) = server
        .graphql(&token("p000011"), json!({ "query": query }))
        .await;
    assert_eq!(mine["data"]["prefetch"]["profileId"], "p000010");
    assert_eq!(theirs["data"]["prefetch"]["profileId"], "p000011");
    assert_ne!(
        mine["data"]["prefetch"]["events"], theirs["data"]["prefetch"]["events"],
        "personal rows differ"
    );
    // There is no way to name another profile.
    let (_, sneaky) = server
        .graphql(
            &token("p000010"),
            json!({ "query": r#"{ prefetch(profileId: "p000011") { profileId } }"# }),
        )
        .await;
    assert_eq!(error_code(&sneaky), "GRAPHQL_VALIDATION_FAILED");
    assert!(sneaky["data"].is_null());
    // A profile the catalog does not know gets the shared cold-start page, not someone's.
    let (_, stranger) = server
        .graphql(&token("nobody-known"), json!({ "query": query }))
        .await;
    assert_eq!(stranger["data"]["prefetch"]["profileId"], "nobody-known");
    assert_ne!(
        stranger["data"]["prefetch"]["events"],
        mine["data"]["prefetch"]["events"]
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_get_stable_codes() {
    let server = TestServer::start_with_prefetch(|setup| {
        setup.config.limits = ringside_prefetch::limits::QueryLimits {
            max_depth: 6,
            max_fields: 60,
            max_aliases: 3,
            ..Default::default()
        };
    })
    .await;
    let device = token("p000004");
    let cases: Vec<(Value, &str)> = vec![
        (json!({ "query": "{ prefetch { " }), "GRAPHQL_PARSE_FAILED"),
        (
            json!({ "query": "{ nothingHere }" }),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            json!({ "query": r#"{ event(id: "no-such-event") { id } }"# }),
            "UNKNOWN_EVENT",
        ),
        (
            json!({ "query": r#"{ event(id: "fight-night") { stage(name: "HALFTIME") { stage } } }"# }),
            "UNKNOWN_STAGE",
        ),
        (
            json!({ "query": "{ prefetch { events { byStage { home { rows { cards { artwork { url } } } } } } } }" }),
            "QUERY_TOO_DEEP",
        ),
        (
            json!({ "query": "{ a: prefetch { profileId } b: prefetch { profileId } c: prefetch { profileId } d: prefetch { profileId } }" }),
            "TOO_MANY_ALIASES",
        ),
        (
            json!({ "query": format!("query {{ prefetch {{ profileId {} }} }}", "...F ".repeat(20)) + " fragment F on Prefetch { profileId cacheHint { ttlSeconds } }" }),
            "QUERY_TOO_COMPLEX",
        ),
        (
            json!({ "extensions": { "persistedQuery": { "version": 1, "sha256Hash": "00".repeat(32) } } }),
            "PERSISTED_QUERY_NOT_FOUND",
        ),
        (
            json!({ "query": "{ prefetch { profileId } }", "extensions": { "persistedQuery": { "version": 1, "sha256Hash": "00".repeat(32) } } }),
            "PERSISTED_QUERY_HASH_MISMATCH",
        ),
        (json!({ "variables": {} }), "BAD_REQUEST"),
    ];
    for (request, code) in cases {
        let (response, body) = server.graphql(&device, request.clone()).await;
        assert_eq!(response.status, 200, "{request}");
        assert_eq!(error_code(&body), code, "{request}");
        assert!(!body["errors"][0]["message"].as_str().unwrap().is_empty());
    }

    // HTTP-level refusals.
    let expired = crate::support::device_token("late", -5);
    let (response, body) = server
        .graphql(&expired, json!({ "query": "{ prefetch { profileId } }" }))
        .await;
    assert_eq!(response.status, 401);
    assert_eq!(error_code(&body), "UNAUTHENTICATED");
    let missing =
        ringside_client::http::call(&server.base, "POST", "/graphql", &[], Some(b"{}".to_vec()))
            .await
            .unwrap();
    assert_eq!(missing.status, 401);
    let huge =
        json!({ "query": format!("{{ prefetch {{ profileId }} }} #{}", "x".repeat(70 * 1024)) });
    let (response, body) = server.graphql(&device, huge).await;
    assert_eq!(response.status, 413);
    assert_eq!(error_code(&body), "PAYLOAD_TOO_LARGE");
    let (response, body) = server
        .graphql(&device, Value::String("not an object".into()))
        .await;
    assert_eq!(response.status, 400, "JSON that is not a request");
    assert_eq!(error_code(&body), "BAD_REQUEST");
    server.stop().await;
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn persisted_queries_work_over_cacheable_gets() {
    let server = TestServer::start().await;
    let device = token("p000005");
    let query = "{ prefetch { profileId cacheHint { ttlSeconds } } }";
    let hash = sha256_hex(query);
    let extensions = json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } }).to_string();
    let get_path = format!("/graphql?extensions={}", percent_encode(&extensions));
    let bearer = format!("Bearer {device}");
    let get = |path: &str| {
        let (base, path, bearer) = (server.base.clone(), path.to_owned(), bearer.clone());
        async move {
            ringside_client::http::call(&base, "GET", &path, &[("authorization", &bearer)], None)
                .await
                .unwrap()
        }
    };

    // Unknown hash first: the client then sends the text once.
    let first = get(&get_path).await;
    let body: Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(error_code(&body), "PERSISTED_QUERY_NOT_FOUND");
    let (_, registered) = server.graphql(&device, json!({ "query": query, "extensions": { "persistedQuery": { "version": 1, "sha256Hash": hash } } })).await;
    assert_eq!(registered["data"]["prefetch"]["profileId"], "p000005");

    let cached = get(&get_path).await;
    assert_eq!(cached.status, 200);
    let body: Value = serde_json::from_slice(&cached.body).unwrap();
    assert_eq!(body["data"]["prefetch"]["profileId"], "p000005");
    let cache_control = cached.headers["cache-control"].to_str().unwrap();
    assert!(
        cache_control.starts_with("private, max-age="),
        "{cache_control}"
    );
    assert_eq!(cached.headers["vary"], "Authorization");
    server.stop().await;
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn graphiql_is_served_in_development() {
    let server = TestServer::start().await;
    let page = ringside_client::http::call(&server.base, "GET", "/graphql", &[], None)
        .await
        .unwrap();
    assert_eq!(page.status, 200);
    assert!(page.text().contains("GraphiQL"));
    server.stop().await;
}

#[test]
fn schema_graphql_is_the_schema_the_code_serves() {
    let served = ringside_prefetch::schema::build_schema(Default::default(), true).sdl();
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
        .unwrap_or_default();
    assert!(
        committed == served,
        "schema.graphql is out of date: run `cargo run -q -- schema > schema.graphql` and review the diff"
    );
}

#[tokio::test]
async fn concurrent_misses_for_one_page_read_the_store_once() {
    let keys = RedisKeys::new("coalesce");
    let server = TestServer::start_with_prefetch(|setup| {
        setup.store = ringside::content::StoreSetup::Redis {
            url: keys.url.clone(),
            prefix: keys.prefix.clone(),
        };
    })
    .await;
    let query = json!({ "query": r#"{ event(id: "fight-night") { byStage { stage } } }"# });
    let device = token("p000020");
    let answers =
        futures_util::future::join_all((0..40).map(|_| server.graphql(&device, query.clone())))
            .await;
    assert!(
        answers
            .iter()
            .all(|(r, b)| r.status == 200 && b.get("errors").is_none())
    );
    assert_eq!(
        server.metric("ringside_prefetch_store_reads_total").await,
        1
    );
    assert!(
        keys.count().await >= 1,
        "the page computed on demand was stored in Redis"
    );
    server.stop().await;
}

#[tokio::test]
async fn materialization_fills_redis_once_and_skips_unchanged_events() {
    use ringside_prefetch::{EventSource, PrefetchService};
    let keys = RedisKeys::new("materialize");
    let dataset =
        ringside::content::DatasetSource::Generated(ringside_prefetch::generate::DatasetSize {
            titles: 1_000,
            profiles: 120,
            seed: 5,
        });
    let catalog = std::sync::Arc::new(ringside::content::load_catalog(&dataset).await.unwrap());
    let store = ringside::content::open_store(
        &ringside::content::StoreSetup::Redis {
            url: keys.url.clone(),
            prefix: keys.prefix.clone(),
        },
        &catalog,
    )
    .await
    .unwrap();
    let events = ringside::content::CatalogEvents {
        catalog: catalog.clone(),
    }
    .events()
    .await;
    let service = PrefetchService::new(
        catalog.clone(),
        store,
        std::sync::Arc::new(ringside::content::CatalogEvents { catalog }),
        ringside_auth::DeviceTokenKey::new(DEVICE_SECRET.as_bytes()).unwrap(),
        ringside_prefetch::PrefetchConfig::default(),
        &ringside_telemetry::Registry::new(),
    );
    let first = service.materialize_event(&events[0]).await.unwrap();
    assert_eq!((first.pages, first.skipped), (120, false));
    assert_eq!(
        keys.count().await,
        121,
        "a page per profile and the event's fingerprint"
    );
    let again = service.materialize_event(&events[0]).await.unwrap();
    assert_eq!(
        (again.pages, again.skipped),
        (0, true),
        "unchanged: nothing recomputed"
    );
    // A changed event (one more stage) is recomputed; the others are untouched.
    let mut changed = events[0].clone();
    changed
        .stages
        .push(ringside_protocol::Stage::parse("ENCORE").unwrap());
    let redo = service.materialize_event(&changed).await.unwrap();
    assert_eq!((redo.pages, redo.skipped), (120, false));
    assert_eq!(keys.count().await, 121);
}

#[tokio::test]
async fn a_redis_outage_serves_stale_pages_and_clear_errors() {
    let mut redis = OwnRedis::start();
    let url = redis.url();
    let server = TestServer::start_with_prefetch(|setup| {
        setup.store = ringside::content::StoreSetup::Redis {
            url: url.clone(),
            prefix: "ringside:".into(),
        };
        setup.config.cache.ttl = Duration::from_millis(300);
        setup.config.cache.jitter = 0.0;
        setup.config.cache.stale_for = Duration::from_secs(60);
    })
    .await;
    let query = json!({ "query": r#"{ event(id: "championship-final") { byStage { home { rows { cards { id } } } } } }"# });
    let (_, before) = server.graphql(&token("p000030"), query.clone()).await;
    assert!(before.get("errors").is_none(), "{before}");

    let _ = redis.child.kill();
    let _ = redis.child.wait();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Past its TTL, with Redis gone: the stale page, not an error.
    let (response, during) = server.graphql(&token("p000030"), query.clone()).await;
    assert_eq!(response.status, 200);
    assert_eq!(during["data"], before["data"], "{during}");
    // A page never cached has nothing stale to fall back on: a clear error, no internals.
    let (_, cold) = server.graphql(&token("p000031"), query.clone()).await;
    assert_eq!(error_code(&cold), "STORE_UNAVAILABLE");
    assert!(
        !cold["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("redis"),
        "{cold}"
    );
    server.stop().await;
}

/// Events whose stages a test can change while the service runs.
struct ChangingEvents(std::sync::Mutex<Vec<ringside_prefetch::LiveEvent>>);

impl ringside_prefetch::EventSource for ChangingEvents {
    fn events(&self) -> futures_util::future::BoxFuture<'_, Vec<ringside_prefetch::LiveEvent>> {
        let events = self.0.lock().unwrap().clone();
        Box::pin(async move { events })
    }
}

#[tokio::test]
async fn a_changed_event_is_served_with_its_new_content_at_once() {
    use ringside_prefetch::EventSource;
    let dataset =
        ringside::content::DatasetSource::Generated(ringside_prefetch::generate::DatasetSize {
            titles: 1_000,
            profiles: 50,
            seed: 2,
        });
    let catalog = std::sync::Arc::new(ringside::content::load_catalog(&dataset).await.unwrap());
    let initial = ringside::content::CatalogEvents {
        catalog: catalog.clone(),
    }
    .events()
    .await;
    let events = std::sync::Arc::new(ChangingEvents(std::sync::Mutex::new(initial)));
    let service = ringside_prefetch::PrefetchService::new(
        catalog.clone(),
        ringside::content::open_store(&ringside::content::StoreSetup::Memory, &catalog)
            .await
            .unwrap(),
        events.clone(),
        ringside_auth::DeviceTokenKey::new(DEVICE_SECRET.as_bytes()).unwrap(),
        ringside_prefetch::PrefetchConfig::default(),
        &ringside_telemetry::Registry::new(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, ringside_prefetch::http::router(service)).await
    });
    let ask = |query: &'static str| {
        let base = base.clone();
        async move {
            let bearer = format!("Bearer {}", token("p000001"));
            let body = serde_json::to_vec(&json!({ "query": query })).unwrap();
            let response = ringside_client::http::call(
                &base,
                "POST",
                "/graphql",
                &[("authorization", &bearer)],
                Some(body),
            )
            .await
            .unwrap();
            serde_json::from_slice::<Value>(&response.body).unwrap()
        }
    };
    let query =
        r#"{ event(id: "fight-night") { byStage { stage home { rows { cards { id } } } } } }"#;
    let before = ask(query).await;
    assert_eq!(
        before["data"]["event"]["byStage"].as_array().unwrap().len(),
        3
    );

    events
        .0
        .lock()
        .unwrap()
        .iter_mut()
        .find(|e| e.id.as_str() == "fight-night")
        .unwrap()
        .stages
        .insert(2, ringside_protocol::Stage::parse("POST_FIGHT").unwrap());
    let after = ask(query).await;
    assert!(after.get("errors").is_none(), "{after}");
    let stages: Vec<&str> = after["data"]["event"]["byStage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["UPCOMING", "LIVE", "POST_FIGHT", "ENDED"]);
    let post_fight =
        ask(r#"{ event(id: "fight-night") { stage(name: "POST_FIGHT") { stage } } }"#).await;
    assert_eq!(post_fight["data"]["event"]["stage"]["stage"], "POST_FIGHT");
    server.abort();
}

/// `{ event(id: [[[…]]]) { id } }` and friends: nesting that used to overflow the parser's
/// stack (and abort the whole process) or answer `GRAPHQL_PARSE_FAILED`.
#[tokio::test]
async fn deep_nesting_anywhere_is_refused_as_too_deep() {
    let server = TestServer::start().await;
    let device = token("p000040");
    let lists = |levels: usize| {
        format!(
            "{{ event(id: {}3{}) {{ id }} }}",
            "[".repeat(levels),
            "]".repeat(levels)
        )
    };
    let objects = format!(
        "{{ event(id: {}1{}) {{ id }} }}",
        "{a:".repeat(3_000),
        "}".repeat(3_000)
    );
    let selections = format!("{{{}{}", " prefetch {".repeat(70), " }".repeat(71));
    let default_value = format!(
        "query($v: [String] = {}\"x\"{}) {{ prefetch {{ profileId }} }}",
        "[".repeat(200),
        "]".repeat(200)
    );
    let variables = json!({
        "query": "query($v: [String]) { prefetch { profileId } }",
        "variables": { "v": serde_json::from_str::<Value>(&format!("{}\"x\"{}", "[".repeat(100), "]".repeat(100))).unwrap() }
    });
    let cases = vec![
        ("lists, 2,000 levels", json!({ "query": lists(2_000) })),
        ("lists, 3,000 levels", json!({ "query": lists(3_000) })),
        ("objects, 3,000 levels", json!({ "query": objects })),
        ("selections, 70 levels", json!({ "query": selections })),
        ("a variable's default", json!({ "query": default_value })),
        ("variables, 100 levels", variables),
    ];
    for (name, request) in cases {
        let (response, body) = server.graphql(&device, request).await;
        assert_eq!(response.status, 200, "{name}");
        assert_eq!(error_code(&body), "QUERY_TOO_DEEP", "{name}: {body}");
    }
    let (response, _) = server
        .graphql(&device, json!({ "query": "{ prefetch { profileId } }" }))
        .await;
    assert_eq!(response.status, 200, "the node still serves");
    server.stop().await;
}

/// `fragment Fn on Prefetch { ...Fn+1 ×width }` for n < levels: width^levels expanded spreads
/// in about 1.5 KB. The issue's bomb is width 2, 31 levels.
fn fragment_bomb(width: usize, levels: usize, last: &str) -> String {
    let mut text = String::from("query{prefetch{...F0}}");
    for n in 0..levels {
        let spreads = format!("...F{} ", n + 1).repeat(width);
        text.push_str(&format!(" fragment F{n} on Prefetch{{{spreads}}}"));
    }
    text.push_str(&format!(" fragment F{levels} on Prefetch{{{last}}}"));
    text
}

/// The bomb used to pin a runtime worker for minutes while counting zero fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragment_bomb_is_refused_at_once() {
    let server = TestServer::start().await;
    let device = token("p000041");
    let cases = [
        // A chain of 32 fragments is past the nesting limit before anything is counted.
        (fragment_bomb(2, 31, "...Missing"), "QUERY_TOO_DEEP"),
        // 4^16 = 2^32 spreads within the nesting limit: each fragment is costed once.
        (
            fragment_bomb(4, 16, "...Missing"),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (fragment_bomb(4, 16, "profileId"), "QUERY_TOO_COMPLEX"),
        (fragment_bomb(4, 16, ""), "GRAPHQL_PARSE_FAILED"),
    ];
    for (query, code) in cases {
        let (response, body) =
            tokio::time::timeout(PROMPTLY, server.graphql(&device, json!({ "query": query })))
                .await
                .expect("the bomb is answered promptly");
        assert_eq!(response.status, 200);
        assert_eq!(error_code(&body), code, "{body}");
    }
    server.stop().await;
}

/// Writes `head` on a fresh connection and returns the status line of the answer, if one comes
/// within `PROMPTLY`.
async fn raw_status(server: &TestServer, head: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
            if answer.windows(2).any(|w| w == b"\r\n") {
                break;
            }
        }
    };
    tokio::time::timeout(PROMPTLY, read).await.ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().map(str::to_owned)
}

/// A request without a valid token is answered before its body is read, so trickled bodies
/// without tokens cannot hold connections open.
#[tokio::test]
async fn the_token_is_checked_before_the_body_is_read() {
    let server = TestServer::start().await;
    let unsent_body = "POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                       Content-Length: 1000\r\n\r\n{\"query\":";
    let status = raw_status(&server, unsent_body).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 401 Unauthorized"));
    let bad_token = "POST /graphql HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nonsense\r\n\
                     Content-Length: 1000\r\n\r\n";
    let status = raw_status(&server, bad_token).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 401 Unauthorized"));
    server.stop().await;
}

fn persisted(query: &str) -> Value {
    json!({ "query": query, "extensions": { "persistedQuery": { "version": 1, "sha256Hash": sha256_hex(query) } } })
}

fn by_hash(query: &str) -> Value {
    json!({ "extensions": { "persistedQuery": { "version": 1, "sha256Hash": sha256_hex(query) } } })
}

/// A persisted query is remembered only once it parsed and validated, so garbage cannot fill
/// the node's memory.
#[tokio::test]
async fn persisted_queries_are_stored_only_when_they_are_valid() {
    let server = TestServer::start().await;
    let device = token("p000042");
    for (query, code) in [
        ("{ prefetch { ", "GRAPHQL_PARSE_FAILED"),
        ("{ nothingHere }", "GRAPHQL_VALIDATION_FAILED"),
        (
            "{ a: prefetch { profileId } b: prefetch { profileId } c: prefetch { profileId } \
             d: prefetch { profileId } e: prefetch { profileId } f: prefetch { profileId } \
             g: prefetch { profileId } h: prefetch { profileId } i: prefetch { profileId } \
             j: prefetch { profileId } k: prefetch { profileId } l: prefetch { profileId } \
             m: prefetch { profileId } n: prefetch { profileId } o: prefetch { profileId } \
             p: prefetch { profileId } q: prefetch { profileId } r: prefetch { profileId } \
             s: prefetch { profileId } t: prefetch { profileId } u: prefetch { profileId } \
             v: prefetch { profileId } w: prefetch { profileId } x: prefetch { profileId } \
             y: prefetch { profileId } z: prefetch { profileId } aa: prefetch { profileId } \
             ab: prefetch { profileId } ac: prefetch { profileId } ad: prefetch { profileId } \
             ae: prefetch { profileId } }",
            "TOO_MANY_ALIASES",
        ),
    ] {
        let (_, body) = server.graphql(&device, persisted(query)).await;
        assert_eq!(error_code(&body), code, "{query}");
        let (_, body) = server.graphql(&device, by_hash(query)).await;
        assert_eq!(error_code(&body), "PERSISTED_QUERY_NOT_FOUND", "{query}");
    }
    let valid = "{ prefetch { profileId } }";
    let (_, body) = server.graphql(&device, persisted(valid)).await;
    assert_eq!(body["data"]["prefetch"]["profileId"], "p000042");
    let (_, body) = server.graphql(&device, by_hash(valid)).await;
    assert_eq!(body["data"]["prefetch"]["profileId"], "p000042");
    server.stop().await;
}

/// The persisted-query cache is bounded by bytes, not entries: 200 queries of 60 KiB
/// (12 MB) do not all stay, and a GET cannot register a query longer than a POST body.
#[tokio::test]
async fn persisted_queries_are_bounded_by_bytes() {
    let server = TestServer::start().await;
    let device = token("p000043");
    let query = |n: usize| {
        format!(
            "{{ prefetch {{ profileId }} }} # {n} {}",
            "x".repeat(60 * 1024)
        )
    };
    for n in 0..200 {
        let (response, body) = server.graphql(&device, persisted(&query(n))).await;
        assert_eq!(response.status, 200);
        assert_eq!(body["data"]["prefetch"]["profileId"], "p000043", "{n}");
    }
    let mut remembered = 0;
    for n in 0..200 {
        let (_, body) = server.graphql(&device, by_hash(&query(n))).await;
        if body.get("errors").is_none() {
            remembered += 1;
        }
    }
    let budget = ringside_prefetch::PrefetchConfig::default().persisted_query_bytes;
    assert!(
        remembered * 60 * 1024 <= budget as usize + 4 * 60 * 1024,
        "{remembered} queries of 60 KiB remembered"
    );

    server.stop().await;

    // hyper answers 414 past 64 KiB of URI; below that, a GET is held to the body limit.
    let server = TestServer::start_with_prefetch(|setup| {
        setup.config.body_limit_bytes = 16 * 1024;
    })
    .await;
    let long = format!("{{ prefetch {{ profileId }} }} # {}", "x".repeat(20 * 1024));
    let extensions = json!({ "persistedQuery": { "version": 1, "sha256Hash": sha256_hex(&long) } });
    let path = format!(
        "/graphql?query={}&extensions={}",
        percent_encode(&long),
        percent_encode(&extensions.to_string())
    );
    // Raw: the test's HTTP client refuses URIs this long itself.
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {device}\r\n\r\n");
    let status = raw_status(&server, &head).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 413 Payload Too Large"));
    server.stop().await;
}

/// Nested `depth` levels: `{"a":{"a":…{}…}}`.
fn nested_payload(depth: usize) -> String {
    format!(
        "{}{{}}{}",
        "{\"a\":".repeat(depth - 1),
        "}".repeat(depth - 1)
    )
}

/// Payloads deeper than the documented limit are refused at publish (they used to be relayed
/// over WebSocket but served as `null` by prefetch); one at the limit is served whole.
#[tokio::test]
async fn payloads_are_refused_past_the_depth_limit_and_served_whole_at_it() {
    let server = TestServer::start().await;
    let event = ringside_protocol::EventId::parse("fight-night").unwrap();
    let too_deep = format!(r#"{{"stage":"LIVE","payload":{}}}"#, nested_payload(127));
    let path = format!("/v1/admin/events/{event}/publish");
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let answer = ringside_client::http::call(
        &server.base,
        "POST",
        &path,
        &[("authorization", &bearer)],
        Some(too_deep.into_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 400, "{}", answer.text());
    let error: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(error["error"]["code"], "invalid_request", "{error}");
    assert_eq!(error["error"]["field"], "payload", "{error}");

    let at_limit = nested_payload(ringside_protocol::state::PAYLOAD_MAX_DEPTH);
    server.publish(&event, "LIVE", &at_limit).await;
    let (_, body) = server
        .graphql(
            &token("p000044"),
            json!({ "query": r#"{ event(id: "fight-night") { state { payload } } }"# }),
        )
        .await;
    assert_eq!(
        body["data"]["event"]["state"]["payload"],
        serde_json::from_str::<Value>(&at_limit).unwrap(),
        "{body}"
    );
    server.stop().await;
}

/// The execution deadline fires even while resolvers never wait (every page cached): a large
/// query yields to the runtime as it goes, and past the deadline it is answered `TIMEOUT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_execution_deadline_is_answered_timeout() {
    let server = TestServer::start_with_prefetch(|setup| {
        setup.config.execution_timeout = Duration::from_millis(300);
    })
    .await;
    let device = token("p000045");
    // Warm every page this profile will read, so that nothing below waits on a load.
    let warm = json!({ "query": "{ prefetch { events { byStage { home { rows { cards { id } } } } } } }" });
    let mut warmed = false;
    for _ in 0..10 {
        let (_, body) = server.graphql(&device, warm.clone()).await;
        if body.get("errors").is_none() {
            warmed = true;
            break;
        }
    }
    assert!(warmed, "a small query finishes within the deadline");
    // About a second of work in this build (30 aliased artwork lists per card).
    let query = thirty_artwork_lists_per_card(Path::Executor);
    let (response, body) = server.graphql(&device, json!({ "query": query })).await;
    assert_eq!(response.status, 200);
    let text = body.to_string();
    assert_eq!(
        error_code(&body),
        "TIMEOUT",
        "{}",
        &text[..text.len().min(200)]
    );
    server.stop().await;
}

/// Within every query limit, 30 aliased artwork lists per card make a response of about 9 MB,
/// which a slow reader would make the node hold per connection: past the response limit the
/// answer is `RESPONSE_TOO_LARGE` instead.
#[tokio::test]
async fn a_response_past_its_limit_is_refused() {
    let server = TestServer::start().await;
    let device = token("p000046");
    for path in [Path::Compiled, Path::Executor] {
        let query = thirty_artwork_lists_per_card(path);
        let (response, body) = server.graphql(&device, json!({ "query": query })).await;
        assert_eq!(response.status, 200);
        let text = body.to_string();
        assert_eq!(
            error_code(&body),
            "RESPONSE_TOO_LARGE",
            "{path:?}: {}",
            &text[..text.len().min(200)]
        );
        assert!(response.body.len() < 1024, "{} bytes", response.body.len());
        assert_eq!(response.headers["cache-control"], "no-store");
    }
    // The full prefetch is far below the limit.
    let (_, body) = server
        .graphql(&device, json!({ "query": FULL_PREFETCH }))
        .await;
    assert!(body.get("errors").is_none());
    server.stop().await;
}

/// A query whose answer is far past the response limit. `Path::Executor` puts the cards'
/// fields in a fragment, which the compiled fast path leaves to async-graphql (there it is
/// about a second of work in this build); `Path::Compiled` is the same query without one.
fn thirty_artwork_lists_per_card(path: Path) -> String {
    let artwork: String = (0..30)
        .map(|i| format!("a{i}: artwork {{ size url width height }} "))
        .collect();
    match path {
        Path::Compiled => format!(
            "{{ prefetch {{ events {{ byStage {{ home {{ rows {{ cards {{ id title {artwork} }} }} }} }} }} }} }}"
        ),
        Path::Executor => format!(
            "{{ prefetch {{ events {{ byStage {{ home {{ rows {{ cards {{ ...Card }} }} }} }} }} }} }} \
             fragment Card on TitleCard {{ id title {artwork} }}"
        ),
    }
}

#[derive(Debug, Clone, Copy)]
enum Path {
    Compiled,
    Executor,
}

/// `/graphql` as GraphQL over HTTP says: the answer's media type follows `Accept`; in
/// `application/graphql-response+json` a request error (no `data`) is a 400, in the legacy
/// `application/json` (also without `Accept`) a 200; JSON that is no request is a 400 in both;
/// `"extensions": null` is no extensions.
#[tokio::test]
async fn answers_follow_graphql_over_http_media_types() {
    const SPEC: &str = "application/graphql-response+json";
    let server = TestServer::start().await;
    let bearer = format!("Bearer {}", token("p000007"));
    let post = |accept: Option<&'static str>, body: Vec<u8>| {
        let (base, bearer) = (server.base.clone(), bearer.clone());
        async move {
            let mut headers = vec![("authorization", bearer.as_str())];
            if let Some(accept) = accept {
                headers.push(("accept", accept));
            }
            let response =
                ringside_client::http::call(&base, "POST", "/graphql", &headers, Some(body))
                    .await
                    .unwrap();
            let content_type = response.headers["content-type"]
                .to_str()
                .unwrap()
                .to_owned();
            let body: Value = serde_json::from_slice(&response.body).unwrap();
            (response.status, content_type, body)
        }
    };
    let body = |value: Value| serde_json::to_vec(&value).unwrap();
    let fine = body(json!({ "query": "{ prefetch { profileId } }", "extensions": null }));
    let unparsable = body(json!({ "query": "{ prefetch { profileId " }));
    let invalid = body(json!({ "query": "{ prefetch { noSuchField } }" }));

    let (status, media, answer) = post(Some(SPEC), fine.clone()).await;
    assert_eq!((status, media.as_str()), (200, SPEC));
    assert_eq!(
        answer["data"]["prefetch"]["profileId"], "p000007",
        "{answer}"
    );
    // Listed after application/json, or with parameters, it is still accepted; q=0 refuses it.
    let listed = "application/json, application/graphql-response+json;charset=utf-8";
    assert_eq!(post(Some(listed), fine.clone()).await.1, SPEC);
    let refused = "application/graphql-response+json;q=0, application/json";
    assert_eq!(
        post(Some(refused), fine.clone()).await.1,
        "application/json"
    );
    let (status, media, answer) = post(None, fine).await;
    assert_eq!((status, media.as_str()), (200, "application/json"));
    assert!(answer["errors"].is_null(), "{answer}");

    for (request, code) in [
        (unparsable, "GRAPHQL_PARSE_FAILED"),
        (invalid, "GRAPHQL_VALIDATION_FAILED"),
    ] {
        let (status, media, answer) = post(Some(SPEC), request.clone()).await;
        assert_eq!((status, media.as_str()), (400, SPEC), "{answer}");
        assert_eq!(error_code(&answer), code);
        let (status, media, answer) = post(Some("application/json"), request).await;
        assert_eq!(
            (status, media.as_str()),
            (200, "application/json"),
            "{answer}"
        );
        assert_eq!(error_code(&answer), code);
    }
    for accept in [Some(SPEC), None] {
        let (status, _, answer) = post(accept, b"{\"query\": ".to_vec()).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(error_code(&answer), "BAD_REQUEST");
    }
    server.stop().await;
}

/// An answer carries a weak `ETag` for its data and the versions it was built for; the same
/// request with `If-None-Match` gets `304` without a body, on POST and on a persisted GET, until
/// the content changes (here: a new version of the event). Answers with errors get none.
#[tokio::test]
async fn unchanged_answers_are_304_until_a_new_version() {
    let server = TestServer::start().await;
    let event = ringside_protocol::EventId::parse("fight-night").unwrap();
    server.publish(&event, "UPCOMING", "{}").await;
    let bearer = format!("Bearer {}", token("p000004"));
    let query = r#"{ event(id: "fight-night") { id state { version stage } } }"#;
    let extensions = json!({ "persistedQuery": { "version": 1, "sha256Hash": sha256_hex(query) } });
    let post_body =
        serde_json::to_vec(&json!({ "query": query, "extensions": extensions })).unwrap();
    let get_path = format!(
        "/graphql?extensions={}",
        percent_encode(&extensions.to_string())
    );
    let call = |method: &'static str, path: String, body: Option<Vec<u8>>, etag: Option<String>| {
        let (base, bearer) = (server.base.clone(), bearer.clone());
        async move {
            let mut headers = vec![("authorization", bearer.clone())];
            if let Some(etag) = etag {
                headers.push(("if-none-match", etag));
            }
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            ringside_client::http::call(&base, method, &path, &headers, body)
                .await
                .unwrap()
        }
    };
    let header = |response: &ringside_client::http::HttpResponse, name: &str| {
        response
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };

    // The POST registers the persisted query; its answer has a tag.
    let first = call("POST", "/graphql".into(), Some(post_body.clone()), None).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let etag = header(&first, "etag").expect("an ETag");
    assert!(etag.starts_with("W/\""), "{etag}");
    let again = call(
        "POST",
        "/graphql".into(),
        Some(post_body.clone()),
        Some(etag.clone()),
    )
    .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(header(&again, "etag").as_deref(), Some(etag.as_str()));
    assert!(
        header(&again, "cache-control")
            .unwrap()
            .starts_with("private, max-age=")
    );
    // The GET of the same query has the same data, so the same tag.
    let get = call("GET", get_path.clone(), None, Some(etag.clone())).await;
    assert_eq!(get.status, 304, "{}", get.text());
    assert_eq!(header(&get, "vary").as_deref(), Some("Authorization"));
    // Another tag, or none, gets the whole answer.
    let other = call("GET", get_path.clone(), None, Some("W/\"0000\"".into())).await;
    assert_eq!(
        (other.status, header(&other, "etag")),
        (200, Some(etag.clone()))
    );

    // A new version changes the content: the old tag gets the new answer and a new tag.
    let receipt = server.publish(&event, "LIVE", "{}").await;
    let changed = call(
        "POST",
        "/graphql".into(),
        Some(post_body),
        Some(etag.clone()),
    )
    .await;
    assert_eq!(changed.status, 200);
    let answer: Value = serde_json::from_slice(&changed.body).unwrap();
    assert_eq!(
        answer["data"]["event"]["state"]["version"].as_u64(),
        Some(receipt.version)
    );
    assert_ne!(header(&changed, "etag"), Some(etag));

    // The full prefetch, TTL included: one device's answer for unchanged content is the same
    // bytes every time, so it revalidates too.
    let full = serde_json::to_vec(&json!({ "query": FULL_PREFETCH })).unwrap();
    let first_full = call("POST", "/graphql".into(), Some(full.clone()), None).await;
    let full_tag = header(&first_full, "etag").expect("an ETag");
    let again_full = call("POST", "/graphql".into(), Some(full), Some(full_tag)).await;
    assert_eq!(again_full.status, 304);

    // An answer with errors has no tag (nothing to revalidate).
    let failed = call(
        "POST",
        "/graphql".into(),
        Some(serde_json::to_vec(&json!({ "query": r#"{ event(id: "nope") { id } }"# })).unwrap()),
        None,
    )
    .await;
    assert_eq!(failed.status, 200);
    assert_eq!(header(&failed, "etag"), None, "{}", failed.text());
    server.stop().await;
}

/// A persisted query registered on one process is served by hash alone by another process
/// sharing its Redis (a TV app's cacheable GET hits on any node after one registration); a
/// text that does not match its hash is never shared.
#[tokio::test]
async fn a_persisted_query_registered_on_one_node_is_served_by_another() {
    let keys = RedisKeys::new("persisted-shared");
    let start = || {
        let (url, prefix) = (keys.url.clone(), keys.prefix.clone());
        TestServer::start_with_prefetch(move |setup| {
            setup.store = ringside::content::StoreSetup::Redis { url, prefix };
        })
    };
    let (first, second) = (start().await, start().await);
    let device = token("p000008");
    let query = "{ prefetch { profileId } }";
    let hash = sha256_hex(query);
    let by_hash =
        json!({ "extensions": { "persistedQuery": { "version": 1, "sha256Hash": hash } } });
    let (_, body) = second.graphql(&device, by_hash.clone()).await;
    assert_eq!(error_code(&body), "PERSISTED_QUERY_NOT_FOUND");

    let mut registration = by_hash.clone();
    registration["query"] = json!(query);
    let (response, body) = first.graphql(&device, registration).await;
    assert_eq!(response.status, 200, "{body}");
    let (response, body) = second.graphql(&device, by_hash).await;
    assert_eq!(response.status, 200, "{body}");
    assert_eq!(body["data"]["prefetch"]["profileId"], "p000008", "{body}");

    // A mismatched text is refused and shares nothing.
    let other = sha256_hex("{ prefetch { events { id } } }");
    let mismatch = json!({ "query": query,
        "extensions": { "persistedQuery": { "version": 1, "sha256Hash": other } } });
    let (_, body) = first.graphql(&device, mismatch).await;
    assert_eq!(error_code(&body), "PERSISTED_QUERY_HASH_MISMATCH");
    let unknown =
        json!({ "extensions": { "persistedQuery": { "version": 1, "sha256Hash": other } } });
    let (_, body) = second.graphql(&device, unknown).await;
    assert_eq!(error_code(&body), "PERSISTED_QUERY_NOT_FOUND");

    // The shared queries are bounded by `persisted_query_bytes`: a node whose bound the shared
    // queries already fill serves its registration but shares nothing more.
    let tight = {
        let (url, prefix) = (keys.url.clone(), keys.prefix.clone());
        TestServer::start_with_prefetch(move |setup| {
            setup.config.persisted_query_bytes = 200;
            setup.store = ringside::content::StoreSetup::Redis { url, prefix };
        })
        .await
    };
    let long = format!("{{ prefetch {{ profileId }} }} # {}", "padding ".repeat(10));
    let long_hash = sha256_hex(&long);
    let register = json!({ "query": long,
        "extensions": { "persistedQuery": { "version": 1, "sha256Hash": long_hash } } });
    let (response, body) = tight.graphql(&device, register).await;
    assert_eq!(response.status, 200, "{body}");
    let by_long_hash =
        json!({ "extensions": { "persistedQuery": { "version": 1, "sha256Hash": long_hash } } });
    let (_, body) = second.graphql(&device, by_long_hash).await;
    assert_eq!(
        error_code(&body),
        "PERSISTED_QUERY_NOT_FOUND",
        "over the bound: not shared"
    );
    for server in [first, second, tight] {
        server.stop().await;
    }
    drop(keys);
}

/// Answers are compressed as `Accept-Encoding` asks (brotli preferred, else gzip) once they
/// reach `compression_min_bytes`, and decode to the same JSON; smaller ones, and clients that
/// ask for nothing, get them as they are. The admin API and `/metrics` share the layer.
#[tokio::test]
async fn answers_are_compressed_as_the_client_accepts() {
    use std::io::Read as _;
    let server = TestServer::start().await;
    let bearer = format!("Bearer {}", token("p000009"));
    // Big enough to compress.
    let big = json!({ "query": "{ prefetch { profileId events { id title byStage { stage home { rows { id title cards { id title synopsis } } } } } } }" });
    let small = json!({ "query": "{ prefetch { profileId } }" });
    let post = |body: &Value, encoding: Option<&'static str>| {
        let (base, bearer, body) = (
            server.base.clone(),
            bearer.clone(),
            serde_json::to_vec(body).unwrap(),
        );
        async move {
            let mut headers = vec![("authorization", bearer.as_str())];
            if let Some(encoding) = encoding {
                headers.push(("accept-encoding", encoding));
            }
            ringside_client::http::call(&base, "POST", "/graphql", &headers, Some(body))
                .await
                .unwrap()
        }
    };
    let encoding = |response: &ringside_client::http::HttpResponse| {
        response
            .headers
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let plain = post(&big, None).await;
    assert_eq!((plain.status, encoding(&plain)), (200, None));
    assert!(plain.body.len() > 4096, "{} bytes", plain.body.len());
    let answer: Value = serde_json::from_slice(&plain.body).unwrap();
    assert!(answer["errors"].is_null(), "{}", plain.text());
    // The data: `extensions.cacheHint.ttlSeconds` is jittered per answer.
    let expected = answer["data"].clone();

    let gzip = post(&big, Some("gzip")).await;
    assert_eq!(encoding(&gzip).as_deref(), Some("gzip"));
    assert!(
        gzip.body.len() * 3 < plain.body.len(),
        "gzip {} of {}",
        gzip.body.len(),
        plain.body.len()
    );
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(&gzip.body[..])
        .read_to_end(&mut decoded)
        .unwrap();
    assert!(serde_json::from_slice::<Value>(&decoded).unwrap()["data"] == expected);

    let brotli = post(&big, Some("gzip, deflate, br")).await;
    assert_eq!(
        encoding(&brotli).as_deref(),
        Some("br"),
        "brotli first when both are accepted"
    );
    let mut decoded = Vec::new();
    brotli_decompressor::Decompressor::new(&brotli.body[..], 4096)
        .read_to_end(&mut decoded)
        .unwrap();
    assert!(serde_json::from_slice::<Value>(&decoded).unwrap()["data"] == expected);

    // Asked again, the kept answer's kept compressed bytes (the response cache's hits).
    const HITS: &str = r#"ringside_prefetch_response_cache_total{outcome="hit"}"#;
    let hits_before = server.metric(HITS).await;
    for accepted in ["gzip", "br"] {
        let again = post(&big, Some(accepted)).await;
        assert_eq!(encoding(&again).as_deref(), Some(accepted));
        let vary = again.headers.get_all("vary").iter();
        assert!(
            vary.map(|v| v.to_str().unwrap().to_ascii_lowercase())
                .any(|v| v.contains("accept-encoding")),
            "{:?}",
            again.headers
        );
        let first = if accepted == "gzip" { &gzip } else { &brotli };
        assert_eq!(again.body, first.body);
    }
    assert_eq!(server.metric(HITS).await, hits_before + 2);

    let tiny = post(&small, Some("gzip, br")).await;
    assert_eq!(encoding(&tiny), None, "under the threshold: as it is");
    let metrics = ringside_client::http::call(
        &server.base,
        "GET",
        "/metrics",
        &[("accept-encoding", "gzip")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(encoding(&metrics).as_deref(), Some("gzip"));
    server.stop().await;
}

/// Introspection can be switched off (production does, unless `--graphql-introspection`): an
/// introspection query then fails validation while the prefetch itself is served.
#[tokio::test]
async fn introspection_is_answered_only_where_it_is_on() {
    let introspect = json!({ "query": "{ __schema { queryType { name } } }" });
    let prefetch = json!({ "query": "{ prefetch { profileId } }" });
    let device = token("p000010");
    let on = TestServer::start().await;
    let (_, body) = on.graphql(&device, introspect.clone()).await;
    assert_eq!(
        body["data"]["__schema"]["queryType"]["name"], "QueryRoot",
        "{body}"
    );
    on.stop().await;

    let off = TestServer::start_with_prefetch(|setup| setup.config.introspection = false).await;
    let (_, body) = off.graphql(&device, introspect).await;
    assert_eq!(error_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    let (_, body) = off.graphql(&device, prefetch).await;
    assert_eq!(body["data"]["prefetch"]["profileId"], "p000010", "{body}");
    off.stop().await;
}

/// The full prefetch is answered by the compiled fast path; a query outside its subset (a
/// fragment) and one whose answer is an error (an unknown stage) by the executor, with the
/// same data and the same error codes as ever.
#[tokio::test]
async fn known_queries_take_the_compiled_path_and_the_rest_the_executor() {
    const COMPILED: &str = r#"ringside_prefetch_answers_total{path="compiled"}"#;
    const EXECUTOR: &str = r#"ringside_prefetch_answers_total{path="executor"}"#;
    let server = TestServer::start().await;
    let device = token("p000011");
    let (response, full) = server
        .graphql(&device, json!({ "query": FULL_PREFETCH }))
        .await;
    assert_eq!(response.status, 200);
    assert!(full.get("errors").is_none(), "{full}");
    assert_eq!(
        (server.metric(COMPILED).await, server.metric(EXECUTOR).await),
        (1, 0)
    );

    let fragment = "{ prefetch { ...P } } fragment P on Prefetch { profileId events { id title } }";
    let (_, executed) = server.graphql(&device, json!({ "query": fragment })).await;
    assert!(executed.get("errors").is_none(), "{executed}");
    assert_eq!(server.metric(EXECUTOR).await, 1);
    let events = |answer: &Value| -> Vec<(Value, Value)> {
        answer["data"]["prefetch"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["id"].clone(), e["title"].clone()))
            .collect()
    };
    assert_eq!(events(&executed), events(&full));
    assert_eq!(
        executed["data"]["prefetch"]["profileId"],
        full["data"]["prefetch"]["profileId"]
    );

    let unknown = r#"{ event(id: "fight-night") { stage(name: "NO_SUCH_STAGE") { stage } } }"#;
    let (_, failed) = server.graphql(&device, json!({ "query": unknown })).await;
    assert_eq!(error_code(&failed), "UNKNOWN_STAGE", "{failed}");
    assert_eq!(
        (server.metric(COMPILED).await, server.metric(EXECUTOR).await),
        (1, 2),
        "the plan gave way to the executor"
    );
    server.stop().await;
}
