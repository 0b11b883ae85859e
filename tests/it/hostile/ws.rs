//! Hostile rows: ws. See `mod.rs` for what every row must keep true.
//!
//! One server runs every row, with limits shrunk so that the rows stay fast: a 1 s header read
//! timeout, a 500 ms subscribe timeout and 64 KiB frames (room for thousands of topics in one
//! subscribe). Each row uses a device id of its own.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;

use super::raw_ws::{
    self, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, RawWs, frame, text,
};
use ringside_protocol::frame::GoawayReason;
use ringside_protocol::{ErrorCode, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Bystander;
use crate::support::{PROMPTLY, TestServer, device_token};

const MAX_FRAME_BYTES: usize = 64 * 1024;

/// What the hostile client does.
enum Hostile {
    /// Upgrades, then writes these bytes (whole frames) at once.
    Frames(Vec<u8>),
    /// Opens a TCP connection and writes these bytes, then nothing more.
    Raw(Vec<u8>),
    /// Opens a TCP connection and writes these bytes one at a time, this far apart.
    Trickle(Vec<u8>, Duration),
    /// Upgrades and subscribes with a small receive buffer, then reads nothing while this many
    /// ~4 KiB states are published.
    StopsReading(u64),
    /// Opens this many upgraded connections with one device token.
    ManySockets(usize),
}

/// The answer the hostile client must get.
enum Expect {
    /// An `error` frame with this code, then a close frame with this close code.
    Error(ErrorCode, u16),
    /// A close frame with this code (the WebSocket layer's own answer, no `error` frame).
    Close(u16),
    /// A `goaway` with this reason, then a close frame with this close code.
    Goaway(GoawayReason, u16),
    /// A frame of this `type`, and the connection stays open.
    Answer(&'static str),
    /// The server ends the TCP connection (with or without an HTTP answer first).
    Dropped,
    /// The last of the connections is refused with this HTTP status and `Retry-After`.
    Refused(u16),
}

struct Row {
    name: &'static str,
    hostile: Hostile,
    expect: Expect,
}

fn row(name: &'static str, hostile: Hostile, expect: Expect) -> Row {
    Row {
        name,
        hostile,
        expect,
    }
}

fn subscribe_to(topics: &[String]) -> String {
    let entries: Vec<String> = topics
        .iter()
        .map(|topic| format!(r#"{{"topic":{}}}"#, serde_json::to_string(topic).unwrap()))
        .collect();
    format!(r#"{{"type":"subscribe","topics":[{}]}}"#, entries.join(","))
}

fn subscribe_since(since: &str) -> String {
    format!(r#"{{"type":"subscribe","topics":[{{"topic":"event:since","since":{since}}}]}}"#)
}

fn repeated(frame: &[u8], times: usize) -> Vec<u8> {
    frame.repeat(times)
}

fn rows() -> Vec<Row> {
    use Expect::*;
    use Hostile::*;
    let oversized = format!(
        r#"{{"type":"ack","pad":"{}"}}"#,
        "x".repeat(MAX_FRAME_BYTES)
    );
    let half = "x".repeat(MAX_FRAME_BYTES / 2 + 100);
    let fragmented_oversized = [
        frame(
            false,
            OP_TEXT,
            format!(r#"{{"type":"ack","pad":"{half}"#).as_bytes(),
        ),
        frame(true, OP_CONTINUATION, format!(r#"{half}"}}"#).as_bytes()),
    ]
    .concat();
    let fragmented_subscribe = [
        frame(false, OP_TEXT, br#"{"type":"subscribe","#),
        frame(false, OP_CONTINUATION, br#""topics":[{"topic":"#),
        frame(true, OP_CONTINUATION, br#""event:fragments"}]}"#),
    ]
    .concat();
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let distinct_topics: Vec<String> = (0..2500).map(|i| format!("event:t{i:x}")).collect();
    let one_topic_repeated = vec!["event:same".to_owned(); 2500];
    let subscribe_unsubscribe = [
        text(&subscribe_to(&["event:churn".to_owned()])),
        text(r#"{"type":"unsubscribe","topics":["event:churn"]}"#),
    ]
    .concat();
    let upgrade = raw_ws::upgrade_request(&device_token("slowloris", 3600));

    vec![
        row(
            "oversized text frame",
            Frames(text(&oversized)),
            Error(ErrorCode::FrameTooLarge, 1009),
        ),
        row(
            "oversized message in two fragments",
            Frames(fragmented_oversized),
            Error(ErrorCode::FrameTooLarge, 1009),
        ),
        row(
            "subscribe in three fragments",
            Frames(fragmented_subscribe),
            Answer("subscribed"),
        ),
        row(
            "continuation without a start",
            Frames(frame(true, OP_CONTINUATION, b"{}")),
            Error(ErrorCode::ProtocolViolation, 1002),
        ),
        row(
            "text frame inside a fragmented message",
            Frames([frame(false, OP_TEXT, b"{"), frame(true, OP_TEXT, b"}")].concat()),
            Error(ErrorCode::ProtocolViolation, 1002),
        ),
        row(
            "fragmented ping",
            Frames(frame(false, OP_PING, b"x")),
            Error(ErrorCode::ProtocolViolation, 1002),
        ),
        row(
            "ping longer than 125 bytes",
            Frames(frame(true, OP_PING, &[b'x'; 200])),
            Error(ErrorCode::ProtocolViolation, 1002),
        ),
        row(
            "reserved opcode",
            Frames(frame(true, 0x3, b"")),
            Error(ErrorCode::ProtocolViolation, 1002),
        ),
        row(
            "unmasked frame",
            Frames(vec![0x81, 0x02, b'{', b'}']),
            Error(ErrorCode::ProtocolViolation, 1002),
        ),
        row(
            "binary frame",
            Frames(frame(true, OP_BINARY, &[0, 1, 2])),
            Error(ErrorCode::BinaryNotSupported, 1007),
        ),
        row(
            "invalid UTF-8 text",
            Frames(frame(true, OP_TEXT, &[b'{', 0xFF, 0xFE, b'}'])),
            Error(ErrorCode::InvalidJson, 1007),
        ),
        row(
            "invalid UTF-8 across fragments",
            Frames(
                [
                    frame(false, OP_TEXT, &[b'"', 0xE2, 0x82]),
                    frame(true, OP_CONTINUATION, b"(\""),
                ]
                .concat(),
            ),
            Error(ErrorCode::InvalidJson, 1007),
        ),
        row(
            "close with code 999",
            Frames(frame(true, OP_CLOSE, &999u16.to_be_bytes())),
            Close(1002),
        ),
        row(
            "close with reserved code 1005",
            Frames(frame(true, OP_CLOSE, &1005u16.to_be_bytes())),
            Close(1002),
        ),
        row(
            "close with a one-byte payload",
            Frames(frame(true, OP_CLOSE, &[3])),
            Close(1002),
        ),
        row(
            "close with an invalid UTF-8 reason",
            Frames(frame(true, OP_CLOSE, &[0x03, 0xE8, 0xFF, 0xFE])),
            Close(1007),
        ),
        row(
            "deeply nested JSON in the topics",
            Frames(text(&format!(
                r#"{{"type":"subscribe","topics":{}}}"#,
                nested(10_000)
            ))),
            Error(ErrorCode::InvalidFrame, 1007),
        ),
        // Unknown fields are ignored by design (newer clients may add some); serde_json skips
        // them without recursing, so depth is bounded by the frame size alone.
        row(
            "deeply nested JSON in an unknown field",
            Frames(text(&format!(
                r#"{{"x":{},"type":"subscribe","topics":[{{"topic":"event:nested"}}]}}"#,
                nested(30_000)
            ))),
            Answer("subscribed"),
        ),
        row(
            "thousands of topics in one subscribe",
            Frames(text(&subscribe_to(&distinct_topics))),
            Error(ErrorCode::TooManyTopics, 1008),
        ),
        row(
            "one topic thousands of times in one subscribe",
            Frames(text(&subscribe_to(&one_topic_repeated))),
            Answer("subscribed"),
        ),
        row(
            "unicode topic",
            Frames(text(&subscribe_to(&["event:ñandú-🥊".to_owned()]))),
            Error(ErrorCode::BadTopic, 1008),
        ),
        row(
            "path traversal topic",
            Frames(text(&subscribe_to(&["event:../../etc/passwd".to_owned()]))),
            Error(ErrorCode::BadTopic, 1008),
        ),
        row(
            "empty topic",
            Frames(text(&subscribe_to(&[String::new()]))),
            Error(ErrorCode::BadTopic, 1008),
        ),
        row(
            "topic with a NUL",
            Frames(text(&subscribe_to(&["event:a\0b".to_owned()]))),
            Error(ErrorCode::BadTopic, 1008),
        ),
        row(
            "very long topic",
            Frames(text(&subscribe_to(&[format!(
                "event:{}",
                "a".repeat(20_000)
            )]))),
            Error(ErrorCode::BadTopic, 1008),
        ),
        row(
            "since the largest u64",
            Frames(text(&subscribe_since("18446744073709551615"))),
            Answer("subscribed"),
        ),
        row(
            "since beyond u64",
            Frames(text(&subscribe_since("100000000000000000000000000000"))),
            Error(ErrorCode::InvalidFrame, 1007),
        ),
        row(
            "since negative",
            Frames(text(&subscribe_since("-1"))),
            Error(ErrorCode::InvalidFrame, 1007),
        ),
        row(
            "since a float",
            Frames(text(&subscribe_since("1.5"))),
            Error(ErrorCode::InvalidFrame, 1007),
        ),
        row(
            "since a string",
            Frames(text(&subscribe_since(r#""7""#))),
            Error(ErrorCode::InvalidFrame, 1007),
        ),
        row(
            "flood of subscribe and unsubscribe",
            Frames(repeated(&subscribe_unsubscribe, 300)),
            Error(ErrorCode::RateLimited, 4029),
        ),
        row(
            "flood of pings",
            Frames(repeated(&frame(true, OP_PING, b"hi"), 2000)),
            Error(ErrorCode::RateLimited, 4029),
        ),
        row(
            "flood of unsolicited pongs",
            Frames(repeated(&frame(true, OP_PONG, b""), 2000)),
            Error(ErrorCode::RateLimited, 4029),
        ),
        row(
            "flood of empty fragments",
            Frames(
                [
                    frame(false, OP_TEXT, b""),
                    repeated(&frame(false, OP_CONTINUATION, b""), 5000),
                    frame(true, OP_CONTINUATION, b"{}"),
                ]
                .concat(),
            ),
            Error(ErrorCode::InvalidFrame, 1007),
        ),
        row(
            "TCP connection that sends nothing",
            Raw(Vec::new()),
            Dropped,
        ),
        row(
            "upgrade request that never completes",
            Raw(upgrade[..upgrade.len() - 4].to_vec()),
            Dropped,
        ),
        row(
            "slowloris: upgrade headers trickled",
            Trickle(upgrade.clone(), Duration::from_millis(50)),
            Dropped,
        ),
        row(
            "upgraded, then silent",
            Frames(Vec::new()),
            Goaway(GoawayReason::Idle, 1008),
        ),
        row("device that stops reading", StopsReading(200), Dropped),
        row(
            "one device opening many sockets",
            ManySockets(9),
            Refused(429),
        ),
    ]
}

#[tokio::test]
async fn every_hostile_websocket_client_gets_its_answer_and_harms_nobody() {
    let server = TestServer::start_configured(
        |gateway| {
            gateway.max_frame_bytes = MAX_FRAME_BYTES;
            gateway.subscribe_timeout = Duration::from_millis(500);
        },
        |http| http.header_read_timeout = Duration::from_secs(1),
        |_| {},
    )
    .await;
    let mut bystander = Bystander::join(&server, "ws-bystander").await;
    // Every row runs, and every failing row is named at the end.
    let mut failed = Vec::new();
    for (index, row) in rows().into_iter().enumerate() {
        let device = format!("hostile-{index}");
        let attempt = tokio::time::timeout(
            PROMPTLY + PROMPTLY,
            run(&server, &device, row.hostile, &row.expect, row.name),
        );
        match AssertUnwindSafe(attempt).catch_unwind().await {
            Ok(Ok(())) => {}
            Ok(Err(_elapsed)) => failed.push(format!("{}: hung", row.name)),
            Err(panic) => {
                let message: String = panic_message(&panic).chars().take(400).collect();
                failed.push(format!("{}: {message}", row.name));
            }
        }
        bystander.assert_unharmed(&server, row.name).await;
    }
    assert!(failed.is_empty(), "failing rows:\n{}", failed.join("\n"));
    server.stop().await;
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

async fn run(server: &TestServer, device: &str, hostile: Hostile, expect: &Expect, name: &str) {
    match hostile {
        Hostile::Frames(bytes) => {
            let mut socket = RawWs::connect(server.addr, &device_token(device, 3600)).await;
            // The server may close before it has read all of a bad input: a failed write is
            // part of the answer, not a failure of the row.
            let _written_or_refused = socket.send(&bytes).await;
            expect_frames(&mut socket.reader, expect, name).await;
        }
        Hostile::Raw(bytes) => {
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            stream.write_all(&bytes).await.unwrap();
            expect_dropped(&mut stream, expect, name).await;
        }
        Hostile::Trickle(bytes, pause) => {
            let stream = TcpStream::connect(server.addr).await.unwrap();
            let (mut read, mut write) = stream.into_split();
            let trickle = tokio::spawn(async move {
                for byte in bytes {
                    if write.write_all(&[byte]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
                // Keep the write side open: the server must end the connection itself.
                tokio::time::sleep(PROMPTLY).await;
            });
            let mut answer = Vec::new();
            tokio::time::timeout(PROMPTLY, read.read_to_end(&mut answer))
                .await
                .unwrap_or_else(|_| panic!("row {name:?}: the server kept a trickling client"))
                .ok();
            trickle.abort();
            assert!(matches!(expect, Expect::Dropped), "row {name:?}");
            let answer = String::from_utf8_lossy(&answer);
            assert!(
                !answer.starts_with("HTTP/1.1 101"),
                "row {name:?} was upgraded: {answer}"
            );
        }
        Hostile::StopsReading(publishes) => {
            let event = server.create_event(device).await;
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            let stream = socket.connect(server.addr).await.unwrap();
            let (read, mut write) = stream.into_split();
            write
                .write_all(&raw_ws::upgrade_request(&device_token(device, 3600)))
                .await
                .unwrap();
            write
                .write_all(&text(&subscribe_to(&[event.topic().to_string()])))
                .await
                .unwrap();
            let payload = format!(r#"{{"filler":"{}"}}"#, "x".repeat(4000));
            for _ in 0..publishes {
                server.publish(&event, "LIVE", &payload).await;
            }
            // Longer than the send timeout (2 s on the test server) with a state waiting.
            tokio::time::sleep(Duration::from_secs(3)).await;
            // Only now does it read: what the server had sent, then the end of a connection the
            // server ended as a slow consumer: its goaway and close 4008 when the device read
            // again within the close's bound (2 s), else a cut (it could not hear a close).
            let mut reader = raw_ws::RawReader::new(read);
            let head = reader.read_http_head().await;
            assert!(head.starts_with("HTTP/1.1 101"), "row {name:?}: {head}");
            let (frames, close) = tokio::time::timeout(PROMPTLY, reader.until_close())
                .await
                .unwrap_or_else(|_| panic!("row {name:?}: the stalled device was kept"));
            assert!(matches!(expect, Expect::Dropped), "row {name:?}");
            match close {
                None => {}
                Some((code, reason)) => {
                    assert_eq!(
                        (code, reason.as_str()),
                        (4008, "slow_consumer"),
                        "row {name:?}"
                    );
                    assert!(
                        frames.iter().any(|frame| matches!(
                            frame,
                            ServerFrame::Goaway {
                                reason: GoawayReason::SlowConsumer,
                                ..
                            }
                        )),
                        "row {name:?}: no goaway before the close: {frames:?}"
                    );
                }
            }
            drop(write);
        }
        Hostile::ManySockets(count) => {
            let token = device_token(device, 3600);
            let mut held = Vec::new();
            for _ in 1..count {
                held.push(RawWs::connect(server.addr, &token).await);
            }
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            stream
                .write_all(&raw_ws::upgrade_request(&token))
                .await
                .unwrap();
            let mut answer = Vec::new();
            tokio::time::timeout(PROMPTLY, stream.read_to_end(&mut answer))
                .await
                .unwrap_or_else(|_| panic!("row {name:?}: no answer"))
                .ok();
            let answer = String::from_utf8_lossy(&answer);
            let Expect::Refused(status) = expect else {
                panic!("row {name:?}")
            };
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}")),
                "row {name:?}: {answer}"
            );
            assert!(
                answer.to_ascii_lowercase().contains("retry-after:"),
                "row {name:?}: {answer}"
            );
        }
    }
}

/// Reads the upgraded connection's answer, past its `welcome`, and checks it.
async fn expect_frames(reader: &mut raw_ws::RawReader, expect: &Expect, name: &str) {
    let read = async {
        let mut frames = Vec::new();
        loop {
            match reader.next().await {
                None => return (frames, None),
                Some(raw_ws::Received::Close(code, reason)) => {
                    return (frames, Some((code, reason)));
                }
                Some(raw_ws::Received::Text(text)) => {
                    let frame = ServerFrame::decode(&text)
                        .unwrap_or_else(|error| panic!("row {name:?}: {error}: {text}"));
                    let stays_open = matches!(expect, Expect::Answer(kind)
                        if text.starts_with(&format!(r#"{{"type":"{kind}""#)));
                    frames.push(frame);
                    if stays_open {
                        return (frames, None);
                    }
                }
                Some(_) => {}
            }
        }
    };
    let (frames, close) = tokio::time::timeout(PROMPTLY, read)
        .await
        .unwrap_or_else(|_| panic!("row {name:?}: no answer in time"));
    let after_welcome = match frames.split_first() {
        Some((ServerFrame::Welcome { .. }, rest)) => rest,
        _ => panic!("row {name:?}: no welcome first: {frames:?}"),
    };
    match expect {
        Expect::Error(code, close_code) => {
            let error = after_welcome.iter().find_map(|frame| match frame {
                ServerFrame::Error { code, message } => Some((*code, message.clone())),
                _ => None,
            });
            let (got, message) =
                error.unwrap_or_else(|| panic!("row {name:?}: no error frame: {frames:?}"));
            assert_eq!(got, *code, "row {name:?}: {message}");
            assert!(!message.is_empty(), "row {name:?}");
            assert_eq!(
                close,
                Some((*close_code, code.as_str().to_owned())),
                "row {name:?}: {message}"
            );
        }
        Expect::Close(close_code) => {
            let (got, reason) =
                close.unwrap_or_else(|| panic!("row {name:?}: no close frame: {frames:?}"));
            assert_eq!(got, *close_code, "row {name:?}: {reason}");
        }
        Expect::Goaway(reason, close_code) => {
            assert!(
                matches!(after_welcome, [ServerFrame::Goaway { reason: got, .. }] if got == reason),
                "row {name:?}: {frames:?}"
            );
            assert_eq!(
                close,
                Some((*close_code, reason.as_str().to_owned())),
                "row {name:?}"
            );
        }
        Expect::Answer(_) => {
            assert!(close.is_none(), "row {name:?} was closed: {close:?}");
        }
        Expect::Dropped | Expect::Refused(_) => panic!("row {name:?}: not a frames row"),
    }
}

/// Waits for the server to end a connection that never upgraded.
async fn expect_dropped(stream: &mut TcpStream, expect: &Expect, name: &str) {
    assert!(matches!(expect, Expect::Dropped), "row {name:?}");
    let mut answer = Vec::new();
    tokio::time::timeout(PROMPTLY, stream.read_to_end(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("row {name:?}: the server kept the connection"))
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.starts_with("HTTP/1.1 101"),
        "row {name:?} was upgraded: {answer}"
    );
}
