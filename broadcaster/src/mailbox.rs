//! A connection's outbound path: its mailbox of states and its socket's write side.
//!
//! A state offered by a live fan-out while the connection has nothing waiting is written
//! straight to the socket by the fan-out itself: one non-blocking `send` of the frame the hub
//! encoded, no task woken. Otherwise the state waits here for the connection's task, which is
//! woken to write it. A socket that does not keep up therefore costs the fan-out one failed
//! `send` and never delays the connections after it.
//!
//! What waits is bounded by construction: at most one unsent state per subscribed topic.
//! Overflow policy: a newer state of a topic replaces the unsent older one (conflation), because
//! a device only ever needs the newest state. Offers that are not newer than what the connection
//! was already offered are dropped, so versions seen by a connection strictly increase.
//!
//! Every write to the socket goes through here, as whole frames: the fan-out's direct writes,
//! the task's writes of waiting states, and the WebSocket codec's own frames ([`Mailbox::poll_write`]).
//! When the socket takes a frame only in part, the rest goes to a backlog that is written before
//! anything else, so frames never interleave. The lock is held for one non-blocking write or to
//! swap an `Arc`, never across an `.await`.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use protocol::Topic;
use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use crate::hub::EncodedState;

/// What happened to an offered state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Written to the socket by the offer itself (at least the start of it; a rest the socket
    /// did not take is in the backlog, and the task was woken to write it).
    Written,
    /// Queued for the connection's task to write.
    Queued,
    /// Queued, replacing an older unsent state of the same topic.
    Conflated,
    /// Dropped: not newer than what the connection already has, not subscribed, or the
    /// connection is closing.
    Ignored,
}

#[derive(Debug)]
struct Slot {
    topic: Topic,
    /// Newest version offered to (or held by) the connection.
    newest_version: u64,
    /// Newest version the device acknowledged.
    acked_version: u64,
    /// The device has been told it holds the topic (`subscribed` is written), so live states
    /// may go straight to the socket; until then they wait, to follow that answer.
    announced: bool,
    pending: Option<Delivery>,
}

/// A state taken from a mailbox, to send.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub state: Arc<EncodedState>,
    /// Offered because the connection subscribed behind the current version, rather than by a
    /// live fan-out: its publish may be long past, so it is not a latency sample.
    pub catch_up: bool,
}

#[derive(Debug, Default)]
struct Outbound {
    slots: Vec<Slot>,
    socket: Option<OwnedWriteHalf>,
    /// The unwritten rest of frames the socket took only in part: written before anything else.
    backlog: BytesMut,
    /// At most this many bytes wait in the backlog; a writer waits for the socket beyond it.
    backlog_limit: usize,
    /// The connection is closing: no more states (its last frames still go through).
    sealed: bool,
    /// A write failed: the socket is gone.
    failed: bool,
}

/// One connection's outbound states and socket writes.
#[derive(Debug, Default)]
pub struct Mailbox {
    outbound: Mutex<Outbound>,
    wake: Notify,
}

impl Mailbox {
    /// A mailbox without a socket: every state waits for the connection's task.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A mailbox that writes to `socket`, with at most `backlog_limit` bytes waiting for it.
    pub fn with_socket(socket: OwnedWriteHalf, backlog_limit: usize) -> Arc<Self> {
        Arc::new(Self {
            outbound: Mutex::new(Outbound {
                socket: Some(socket),
                backlog_limit,
                ..Outbound::default()
            }),
            wake: Notify::new(),
        })
    }

    fn outbound(&self) -> std::sync::MutexGuard<'_, Outbound> {
        self.outbound.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts accepting states of `topic` newer than `since`. Returns false when the topic was
    /// already open (its position is kept). Live states wait until [`Mailbox::announce`].
    pub fn open(&self, topic: &Topic, since: u64) -> bool {
        let mut outbound = self.outbound();
        let slots = &mut outbound.slots;
        if slots.iter().any(|slot| &slot.topic == topic) {
            return false;
        }
        // Most connections hold one topic: room for exactly one, not the four a first push
        // reserves (about 190 bytes less per connection).
        if slots.is_empty() {
            slots.reserve_exact(1);
        }
        slots.push(Slot {
            topic: topic.clone(),
            newest_version: since,
            acked_version: 0,
            announced: false,
            pending: None,
        });
        true
    }

    /// The device now knows it holds `topic`: later live states may be written directly.
    pub fn announce(&self, topic: &Topic) {
        if let Some(slot) = self.outbound().slots.iter_mut().find(|s| &s.topic == topic) {
            slot.announced = true;
        }
    }

    /// Stops accepting states of `topic` and drops any unsent one.
    pub fn close(&self, topic: &Topic) -> bool {
        let mut outbound = self.outbound();
        let before = outbound.slots.len();
        outbound.slots.retain(|slot| &slot.topic != topic);
        outbound.slots.len() != before
    }

    /// The connection is closing: accepts no more states and drops unsent ones, so that no
    /// state can follow its close frame. Writes of its last frames still go through.
    pub fn seal(&self) {
        let mut outbound = self.outbound();
        outbound.sealed = true;
        for slot in &mut outbound.slots {
            slot.pending = None;
        }
    }

    /// Offers a state from a live fan-out: written at once when nothing waits, else queued and
    /// the connection woken.
    pub fn offer(&self, state: &Arc<EncodedState>) -> Offer {
        self.offer_delivery(state, false)
    }

    /// Offers the current state to a connection that just subscribed; it follows the
    /// `subscribed` answer, so it is always queued.
    pub fn offer_catch_up(&self, state: &Arc<EncodedState>) -> Offer {
        self.offer_delivery(state, true)
    }

    fn offer_delivery(&self, state: &Arc<EncodedState>, catch_up: bool) -> Offer {
        let mut outbound = self.outbound();
        let Outbound {
            slots,
            socket,
            backlog,
            sealed,
            failed,
            ..
        } = &mut *outbound;
        if *sealed || *failed {
            return Offer::Ignored;
        }
        let Some(slot) = slots.iter_mut().find(|slot| slot.topic == state.topic) else {
            return Offer::Ignored;
        };
        if state.version <= slot.newest_version {
            return Offer::Ignored;
        }
        slot.newest_version = state.version;
        let direct = !catch_up && slot.announced && slot.pending.is_none() && backlog.is_empty();
        if let (true, Some(socket)) = (direct, socket.as_ref()) {
            match socket.try_write(&state.wire) {
                Ok(written) if written == state.wire.len() => return Offer::Written,
                Ok(written) => {
                    backlog.extend_from_slice(&state.wire[written..]);
                    drop(outbound);
                    self.wake.notify_one();
                    return Offer::Written;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    // The task finds out on its next write or read and ends the session.
                    *failed = true;
                    drop(outbound);
                    self.wake.notify_one();
                    return Offer::Ignored;
                }
            }
        }
        let outcome = match slot.pending.replace(Delivery {
            state: state.clone(),
            catch_up,
        }) {
            Some(_) => Offer::Conflated,
            None => Offer::Queued,
        };
        drop(outbound);
        self.wake.notify_one();
        outcome
    }

    /// Records an ack; true when it is the first ack of a version this connection was offered
    /// (so a device cannot inflate delivery counts by repeating or inventing acks).
    pub fn acknowledge(&self, topic: &Topic, version: u64) -> bool {
        let mut outbound = self.outbound();
        let Some(slot) = outbound.slots.iter_mut().find(|slot| &slot.topic == topic) else {
            return false;
        };
        let offered = version <= slot.newest_version && slot.pending.is_none()
            || slot
                .pending
                .as_ref()
                .is_some_and(|p| version < p.state.version);
        if !offered || version <= slot.acked_version {
            return false;
        }
        slot.acked_version = version;
        true
    }

    /// Writes pending states, oldest topic first, each as its whole frame: what the socket does
    /// not take at once joins the backlog, for [`Mailbox::poll_flush`] to finish. Stops while
    /// the backlog is full; returns whether every pending state went. Written states are
    /// appended to `sent`. Taking a state and writing it happen under one lock, so a direct
    /// write of a newer version can never overtake it.
    pub fn write_pending(&self, sent: &mut Vec<Delivery>) -> io::Result<bool> {
        let mut outbound = self.outbound();
        let out = &mut *outbound;
        let socket = writable(&mut out.socket, out.failed)?;
        for slot in &mut out.slots {
            let Some(frame) = slot.pending.as_ref().map(|d| &d.state.wire) else {
                continue;
            };
            if out.backlog.is_empty() {
                match socket.try_write(frame) {
                    Ok(written) => out.backlog.extend_from_slice(&frame[written..]),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        out.backlog.extend_from_slice(frame);
                    }
                    Err(error) => {
                        out.failed = true;
                        return Err(error);
                    }
                }
            } else if out.backlog.len() + frame.len() <= out.backlog_limit {
                out.backlog.extend_from_slice(frame);
            } else {
                return Ok(false);
            }
            sent.extend(slot.pending.take());
        }
        Ok(true)
    }

    /// Moves every pending state into `out`, oldest topic first, without writing it.
    pub fn take_pending(&self, out: &mut Vec<Delivery>) {
        out.extend(
            self.outbound()
                .slots
                .iter_mut()
                .filter_map(|slot| slot.pending.take()),
        );
    }

    /// Resolves when something may be pending or waiting in the backlog. A wake-up that arrives
    /// while nobody waits is kept, so none is ever lost.
    pub async fn ready(&self) {
        self.wake.notified().await;
    }

    /// Writes one or more whole frames: all of `frames` is taken (what the socket does not take
    /// at once joins the backlog), or none of it while the backlog is full.
    pub fn poll_write(&self, cx: &mut Context<'_>, frames: &[u8]) -> Poll<io::Result<usize>> {
        let mut outbound = self.outbound();
        let out = &mut *outbound;
        let socket = match writable(&mut out.socket, out.failed) {
            Ok(socket) => socket,
            Err(error) => return Poll::Ready(Err(error)),
        };
        if let Poll::Ready(Err(error)) = drain(socket, &mut out.backlog, cx) {
            out.failed = true;
            return Poll::Ready(Err(error));
        }
        if !out.backlog.is_empty() {
            if out.backlog.len() + frames.len() > out.backlog_limit {
                // `drain` left the task registered for the socket's next writable edge.
                return Poll::Pending;
            }
            out.backlog.extend_from_slice(frames);
            return Poll::Ready(Ok(frames.len()));
        }
        let written = match socket.try_write(frames) {
            Ok(written) => written,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
            Err(error) => {
                out.failed = true;
                return Poll::Ready(Err(error));
            }
        };
        if written < frames.len() {
            out.backlog.extend_from_slice(&frames[written..]);
            // Whoever flushes next writes it; the task is woken in case nobody does.
            drop(outbound);
            self.wake.notify_one();
        }
        Poll::Ready(Ok(frames.len()))
    }

    /// Resolves once the backlog is written.
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut outbound = self.outbound();
        let out = &mut *outbound;
        let socket = writable(&mut out.socket, out.failed)?;
        let drained = drain(socket, &mut out.backlog, cx);
        if let Poll::Ready(Err(_)) = drained {
            out.failed = true;
        }
        drained
    }

    /// Writes the backlog, then shuts the socket's write side.
    pub fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut outbound = self.outbound();
        let out = &mut *outbound;
        let socket = writable(&mut out.socket, out.failed)?;
        ready!(drain(socket, &mut out.backlog, cx))?;
        Pin::new(socket).poll_shutdown(cx)
    }
}

fn writable(socket: &mut Option<OwnedWriteHalf>, failed: bool) -> io::Result<&mut OwnedWriteHalf> {
    match socket {
        Some(socket) if !failed => Ok(socket),
        Some(_) => Err(io::ErrorKind::BrokenPipe.into()),
        None => Err(io::ErrorKind::NotConnected.into()),
    }
}

/// Writes the backlog until it is empty or the socket is full (then the task is registered for
/// its next writable edge).
fn drain(
    socket: &mut OwnedWriteHalf,
    backlog: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    if backlog.is_empty() {
        return Poll::Ready(Ok(()));
    }
    while !backlog.is_empty() {
        let written = ready!(Pin::new(&mut *socket).poll_write(cx, backlog))?;
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        backlog.advance(written);
    }
    // A backlog is rare: give its memory back rather than keep it on every connection that
    // once had one.
    *backlog = BytesMut::new();
    Poll::Ready(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{EventState, Payload, Stage};
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    fn encoded(topic: &str, version: u64) -> Arc<EncodedState> {
        Arc::new(EncodedState::encode(&EventState {
            topic: Topic::parse(topic).expect("topic"),
            version,
            stage: Stage::parse("LIVE").expect("stage"),
            published_at_ms: 0,
            payload: Payload::empty(),
            priority: protocol::Priority::Critical,
            fetch_within_ms: None,
        }))
    }

    fn pending_versions(mailbox: &Mailbox) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        mailbox.take_pending(&mut out);
        out.iter()
            .map(|d| (d.state.topic.to_string(), d.state.version))
            .collect()
    }

    /// A mailbox writing to a real loopback socket, and the peer's end of it.
    async fn connected(backlog_limit: usize) -> (Arc<Mailbox>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        let (server, _) = accepted.expect("accept");
        let (_read, write) = server.into_split();
        // Let the reactor see the socket writable before the first direct write.
        tokio::task::yield_now().await;
        (
            Mailbox::with_socket(write, backlog_limit),
            client.expect("connect"),
        )
    }

    async fn read_exactly(peer: &mut TcpStream, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        peer.read_exact(&mut bytes).await.expect("read");
        bytes
    }

    #[test]
    fn conflates_to_the_newest_version_per_topic() {
        let mailbox = Mailbox::new();
        let a = Topic::parse("event:a").expect("topic");
        let b = Topic::parse("event:b").expect("topic");
        mailbox.open(&a, 0);
        mailbox.open(&b, 0);
        assert_eq!(mailbox.offer(&encoded("event:a", 1)), Offer::Queued);
        assert_eq!(mailbox.offer(&encoded("event:b", 1)), Offer::Queued);
        assert_eq!(mailbox.offer(&encoded("event:a", 2)), Offer::Conflated);
        assert_eq!(
            pending_versions(&mailbox),
            vec![("event:a".into(), 2), ("event:b".into(), 1)]
        );
        assert!(pending_versions(&mailbox).is_empty());
    }

    #[test]
    fn never_goes_backwards_and_honours_since() {
        let mailbox = Mailbox::new();
        let a = Topic::parse("event:a").expect("topic");
        mailbox.open(&a, 5);
        assert_eq!(mailbox.offer(&encoded("event:a", 5)), Offer::Ignored);
        assert_eq!(mailbox.offer(&encoded("event:a", 7)), Offer::Queued);
        assert_eq!(pending_versions(&mailbox), vec![("event:a".into(), 7)]);
        assert_eq!(mailbox.offer(&encoded("event:a", 6)), Offer::Ignored);
        assert_eq!(mailbox.offer(&encoded("event:a", 7)), Offer::Ignored);
    }

    #[test]
    fn ignores_topics_it_does_not_hold_and_anything_once_sealed() {
        let mailbox = Mailbox::new();
        assert_eq!(mailbox.offer(&encoded("event:a", 1)), Offer::Ignored);
        let a = Topic::parse("event:a").expect("topic");
        mailbox.open(&a, 0);
        mailbox.offer(&encoded("event:a", 1));
        assert!(mailbox.close(&a));
        assert!(pending_versions(&mailbox).is_empty());
        mailbox.open(&a, 0);
        mailbox.offer(&encoded("event:a", 2));
        mailbox.seal();
        assert!(pending_versions(&mailbox).is_empty());
        assert_eq!(mailbox.offer(&encoded("event:a", 3)), Offer::Ignored);
    }

    #[tokio::test]
    async fn an_idle_announced_connection_gets_live_states_written_directly() {
        let (mailbox, mut peer) = connected(64 * 1024).await;
        let a = Topic::parse("event:a").expect("topic");
        mailbox.open(&a, 0);
        // Before `subscribed` is written, live states wait for the task.
        let first = encoded("event:a", 1);
        assert_eq!(mailbox.offer(&first), Offer::Queued);
        mailbox.announce(&a);
        // The task writes what waited; the next live state goes straight out, after it.
        let mut sent = Vec::new();
        assert!(mailbox.write_pending(&mut sent).expect("write"));
        assert_eq!(sent.len(), 1);
        let second = encoded("event:a", 2);
        assert_eq!(mailbox.offer(&second), Offer::Written);
        assert!(pending_versions(&mailbox).is_empty());
        let both = [first.wire.to_vec(), second.wire.to_vec()].concat();
        assert_eq!(read_exactly(&mut peer, both.len()).await, both);
        // A catch-up state always waits, to follow the `subscribed` answer.
        assert_eq!(
            mailbox.offer_catch_up(&encoded("event:a", 3)),
            Offer::Queued
        );
    }

    #[tokio::test]
    async fn a_full_socket_queues_and_conflates_and_the_backlog_is_written_whole() {
        let (mailbox, mut peer) = connected(1 << 20).await;
        let a = Topic::parse("event:a").expect("topic");
        mailbox.open(&a, 0);
        mailbox.announce(&a);
        // Fill the socket while the peer reads nothing: the codec's writes join the backlog.
        let filler = vec![0x82u8; 64 * 1024];
        let mut written = 0;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while mailbox.outbound().backlog.is_empty() {
            match mailbox.poll_write(&mut cx, &filler) {
                Poll::Ready(Ok(n)) => written += n,
                other => panic!("unexpected {other:?}"),
            }
        }
        // Nothing is written around a backlog: live states wait, newest only.
        assert_eq!(mailbox.offer(&encoded("event:a", 1)), Offer::Queued);
        assert_eq!(mailbox.offer(&encoded("event:a", 2)), Offer::Conflated);
        // The peer reads everything; the flush completes and the bytes arrive in order.
        let reader = tokio::spawn(async move { read_exactly(&mut peer, written).await });
        std::future::poll_fn(|cx| mailbox.poll_flush(cx))
            .await
            .expect("flush");
        let received = reader.await.expect("reader");
        assert!(received.iter().all(|&byte| byte == 0x82));
        assert_eq!(pending_versions(&mailbox), vec![("event:a".into(), 2)]);
        assert!(mailbox.outbound().backlog.is_empty());
    }
}
