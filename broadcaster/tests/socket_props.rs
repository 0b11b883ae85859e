//! A mailbox writing to a real loopback socket, under random sequences of live offers,
//! catch-ups, the connection task's writes and the peer's reads: the direct-write path, partial
//! writes and the backlog together. Whatever the sequence, the peer reads whole frames, byte
//! for byte the ones encoded, in strictly increasing versions, ending at the newest: never a
//! torn or interleaved frame.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use ringside_broadcaster::Mailbox;
use ringside_broadcaster::hub::EncodedState;
use ringside_protocol::{EventState, Payload, ServerFrame, Stage, Topic};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

/// Small on both sides (Linux doubles both), so that a few frames fill the path and the
/// socket takes frames in part.
const SEND_BUFFER: u32 = 4096;
const RECEIVE_BUFFER: u32 = 4096;

#[derive(Debug, Clone)]
enum Op {
    /// A live fan-out offers the next version, with a filler of this many bytes.
    Offer(usize),
    /// A catch-up offer of the next version (always queued for the task).
    CatchUp(usize),
    /// The connection's task writes what waits, and tries once to flush the backlog.
    Write,
    /// The peer reads at most this many bytes, without waiting.
    Read(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..4000).prop_map(Op::Offer),
        1 => (0usize..4000).prop_map(Op::CatchUp),
        3 => Just(Op::Write),
        3 => (1usize..12_000).prop_map(Op::Read),
    ]
}

fn encoded(version: u64, filler: usize) -> Arc<EncodedState> {
    let payload =
        Payload::parse(&format!(r#"{{"filler":"{}"}}"#, "x".repeat(filler))).expect("payload");
    Arc::new(EncodedState::encode(&EventState {
        topic: Topic::parse("event:socket-prop").expect("topic"),
        version,
        stage: Stage::parse("LIVE").expect("stage"),
        published_at_ms: 0,
        payload,
        priority: ringside_protocol::Priority::Critical,
        fetch_within_ms: None,
    }))
}

/// Splits `bytes` into whole frames, checking each is exactly the frame encoded for its
/// version; returns the versions and how many bytes at the end are the start of a frame.
fn frames(bytes: &[u8], wires: &HashMap<u64, Arc<EncodedState>>) -> (Vec<u64>, usize) {
    let mut versions = Vec::new();
    let mut at = 0;
    loop {
        let rest = &bytes[at..];
        if rest.len() < 2 {
            return (versions, rest.len());
        }
        assert_eq!(
            rest[0], 0x81,
            "not the start of a whole text frame at byte {at}"
        );
        assert_eq!(rest[1] & 0x80, 0, "a server frame is never masked");
        let (header, len) = match rest[1] {
            126 if rest.len() >= 4 => (4, usize::from(u16::from_be_bytes([rest[2], rest[3]]))),
            127 if rest.len() >= 10 => {
                let len = u64::from_be_bytes(rest[2..10].try_into().expect("eight bytes"));
                (10, usize::try_from(len).expect("length"))
            }
            126 | 127 => return (versions, rest.len()),
            len => (2, usize::from(len)),
        };
        if rest.len() < header + len {
            return (versions, rest.len());
        }
        let text = std::str::from_utf8(&rest[header..header + len]).expect("UTF-8");
        let ServerFrame::State(state) = ServerFrame::decode(text).expect("a server frame") else {
            panic!("not a state: {text}");
        };
        let wire = &wires.get(&state.version).expect("an offered version").wire;
        assert_eq!(
            &rest[..header + len],
            &wire[..],
            "frame of {}",
            state.version
        );
        versions.push(state.version);
        at += header + len;
    }
}

/// Reads what the peer has without waiting, at most `limit` bytes.
fn read_now(peer: &TcpStream, received: &mut Vec<u8>, limit: usize) {
    let mut buffer = vec![0; limit];
    if let Ok(read) = peer.try_read(&mut buffer) {
        received.extend_from_slice(&buffer[..read]);
    }
}

/// One run: returns whether the peer, having read all there was mid-run, ever held the start
/// of a frame whose rest had not reached it (a frame the socket took in part).
fn run(ops: Vec<Op>, backlog_limit: usize) -> Result<bool, TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let (mailbox, mut peer) = socket_pair(backlog_limit).await;
        let topic = Topic::parse("event:socket-prop").expect("topic");
        mailbox.open(&topic, 0);
        mailbox.announce(&topic);
        let mut wires = HashMap::new();
        let mut newest = 0;
        let mut received = Vec::new();
        let mut saw_torn_tail = false;
        let mut sent = Vec::new();
        let mut context = Context::from_waker(Waker::noop());
        for op in ops {
            match op {
                Op::Offer(filler) | Op::CatchUp(filler) => {
                    newest += 1;
                    let state = encoded(newest, filler);
                    wires.insert(newest, state.clone());
                    if matches!(op, Op::Offer(_)) {
                        mailbox.offer(&state);
                    } else {
                        mailbox.offer_catch_up(&state);
                    }
                }
                Op::Write => {
                    mailbox.write_pending(&mut sent).expect("write");
                    if let Poll::Ready(result) = mailbox.poll_flush(&mut context) {
                        result.expect("flush");
                    }
                }
                Op::Read(limit) => {
                    read_now(&peer, &mut received, limit);
                    let (_, tail) = frames(&received, &wires);
                    // Everything the peer could read is read: a tail is a frame cut by the
                    // socket, whose rest waits in the mailbox's backlog.
                    if tail > 0 {
                        let mut more = [0u8; 1];
                        match peer.try_read(&mut more) {
                            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                                saw_torn_tail = true;
                            }
                            Ok(read) => received.extend_from_slice(&more[..read]),
                            Err(error) => panic!("read: {error}"),
                        }
                    }
                }
            }
            // Lets the reactor see the sockets' readiness, as a running server's would.
            tokio::task::yield_now().await;
        }

        // The task finishes: everything waiting goes out while the peer reads to the end.
        let reader = tokio::spawn(async move {
            peer.read_to_end(&mut received).await.expect("read to end");
            received
        });
        loop {
            let all = mailbox.write_pending(&mut sent).expect("write");
            std::future::poll_fn(|cx| mailbox.poll_flush(cx))
                .await
                .expect("flush");
            if all {
                break;
            }
        }
        std::future::poll_fn(|cx| mailbox.poll_shutdown(cx))
            .await
            .expect("shutdown");
        drop(mailbox);
        let received = reader.await.expect("reader");
        let (versions, tail) = frames(&received, &wires);
        prop_assert_eq!(tail, 0, "the stream ends in a torn frame");
        prop_assert!(versions.windows(2).all(|w| w[0] < w[1]), "{:?}", versions);
        prop_assert_eq!(versions.last().copied(), (newest > 0).then_some(newest));
        Ok(saw_torn_tail)
    })
}

/// The mailbox's end (small send buffer, at most `backlog_limit` bytes of backlog) and the
/// peer's (small receive buffer).
async fn socket_pair(backlog_limit: usize) -> (Arc<Mailbox>, TcpStream) {
    let listening = TcpSocket::new_v4().expect("socket");
    listening
        .set_recv_buffer_size(RECEIVE_BUFFER)
        .expect("SO_RCVBUF");
    listening
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let listener = listening.listen(1).expect("listen");
    let connecting = TcpSocket::new_v4().expect("socket");
    connecting
        .set_send_buffer_size(SEND_BUFFER)
        .expect("SO_SNDBUF");
    let (connected, accepted) = tokio::join!(
        connecting.connect(listener.local_addr().expect("address")),
        listener.accept()
    );
    let (peer, _) = accepted.expect("accept");
    let (_read, write) = connected.expect("connect").into_split();
    // Let the reactor see the socket writable before the first direct write.
    tokio::task::yield_now().await;
    (Mailbox::with_socket(write, backlog_limit), peer)
}

#[test]
fn the_peer_reads_whole_frames_in_increasing_versions_ending_at_the_newest() {
    // Few cases by default, each a few hundred operations on real sockets;
    // PROPTEST_CASES raises it.
    let config = Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(24),
        // No source file to persist failures next to: a failure prints its minimal case.
        failure_persistence: None,
        ..Config::default()
    };
    let torn = Arc::new(AtomicUsize::new(0));
    let counted = torn.clone();
    let mut runner = TestRunner::new(config);
    runner
        .run(
            &(prop::collection::vec(op(), 1..300), 0usize..20_000),
            move |(ops, backlog_limit)| {
                if run(ops, backlog_limit)? {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            },
        )
        .unwrap_or_else(|failure| panic!("{failure}"));
    // The sequences reached what this test is about: frames the socket took only in part.
    assert!(
        torn.load(Ordering::Relaxed) > 0,
        "no run ever had a frame cut by a full socket"
    );
}
