//! Property tests: every frame the codec encodes decodes to the same frame, and no input makes
//! the decoder panic.

use proptest::prelude::*;
use ringside_protocol::frame::{GoawayReason, encode_state};
use ringside_protocol::{
    ClientFrame, ErrorCode, EventState, Payload, ServerFrame, Stage, SubscribeTopic, Topic,
};

fn topic() -> impl Strategy<Value = Topic> {
    "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}"
        .prop_map(|id| Topic::parse(&format!("event:{id}")).expect("generated topics are valid"))
}

fn stage() -> impl Strategy<Value = Stage> {
    "[A-Z][A-Z0-9_]{0,31}".prop_map(|s| Stage::parse(&s).expect("generated stages are valid"))
}

fn payload() -> impl Strategy<Value = Payload> {
    prop::collection::btree_map("[^\"\\\\]{0,12}", any::<i64>(), 0..8).prop_map(|map| {
        Payload::parse(&serde_json::to_string(&map).expect("map encodes")).expect("object")
    })
}

fn event_state() -> impl Strategy<Value = EventState> {
    (topic(), any::<u64>(), stage(), any::<u64>(), payload()).prop_map(
        |(topic, version, stage, published_at_ms, payload)| EventState {
            topic,
            version,
            stage,
            published_at_ms,
            payload,
            priority: ringside_protocol::Priority::Critical,
            fetch_within_ms: None,
        },
    )
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        prop::collection::vec((topic(), any::<u64>()), 0..6).prop_map(|topics| {
            ClientFrame::Subscribe {
                topics: topics
                    .into_iter()
                    .map(|(topic, since)| SubscribeTopic { topic, since })
                    .collect(),
            }
        }),
        prop::collection::vec(topic(), 0..6).prop_map(|topics| ClientFrame::Unsubscribe { topics }),
        (topic(), any::<u64>()).prop_map(|(topic, version)| ClientFrame::Ack { topic, version }),
    ]
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        ("[a-z0-9-]{1,20}", "[a-z0-9-]{1,20}", any::<u64>()).prop_map(|(c, n, h)| {
            ServerFrame::Welcome {
                connection_id: c,
                node: n,
                heartbeat_ms: h,
                protocol: 1,
            }
        }),
        prop::collection::vec(topic(), 0..4).prop_map(|topics| ServerFrame::Subscribed { topics }),
        prop::collection::vec(topic(), 0..4)
            .prop_map(|topics| ServerFrame::Unsubscribed { topics }),
        event_state().prop_map(ServerFrame::State),
        any::<u64>().prop_map(|ms| ServerFrame::Goaway {
            reconnect_after_ms: ms,
            reason: GoawayReason::Shutdown
        }),
        ".{0,40}".prop_map(|message| ServerFrame::Error {
            code: ErrorCode::BadTopic,
            message
        }),
    ]
}

proptest! {
    #[test]
    fn client_frames_round_trip(frame in client_frame()) {
        prop_assert_eq!(ClientFrame::decode(&frame.encode()).expect("decodes"), frame);
    }

    #[test]
    fn server_frames_round_trip(frame in server_frame()) {
        prop_assert_eq!(ServerFrame::decode(&frame.encode()).expect("decodes"), frame);
    }

    #[test]
    fn shared_state_encoding_equals_the_frame_encoding(state in event_state()) {
        let shared = encode_state(&state);
        prop_assert_eq!(shared, ServerFrame::State(state).encode());
    }

    #[test]
    fn decoder_never_panics(text in ".{0,200}") {
        let _ = ClientFrame::decode(&text);
        let _ = ServerFrame::decode(&text);
    }

    #[test]
    fn decoder_never_panics_on_near_frames(
        kind in prop_oneof![Just("subscribe".to_owned()), Just("unsubscribe".to_owned()), Just("ack".to_owned()), ".{0,8}"],
        body in ".{0,60}",
    ) {
        let text = format!(r#"{{"type":"{kind}",{body}}}"#);
        let _ = ClientFrame::decode(&text);
    }
}
