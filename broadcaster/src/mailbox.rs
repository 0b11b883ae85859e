//! A connection's outbound path: its mailbox of states and its socket's write side.
//!
//! A state offered by a live fan-out while the connection has nothing waiting is written
//! straight to the socket by the fan-out itself: one non-blocking `send` of the frame the hub
//! encoded, no task woken. Otherwise the state waits here for the connection's task, which is
//! woken to write it. A socket that does not keep up therefore costs the fan-out one failed
//! `send` and never delays the connections after it.
//!
//! Each topic has two lanes. The **critical** lane carries the event's stage states; the
//! **best-effort** lane carries extra messages (a viewer count, a score ticker), which are never
//! the event's state. What waits is bounded by construction: at most one unsent message per
//! subscribed topic and lane. Overflow policy, per lane: a newer message of a topic replaces
//! the unsent older one (conflation), because a device only ever needs the newest. Each lane
//! keeps its own newest version, so a best-effort message never holds back a later state nor a
//! state a later best-effort message; offers that are not newer than what the lane was already
//! offered are dropped, so versions seen by a connection strictly increase per lane.
//!
//! When the connection is behind (something waits, or the socket took a frame only in part),
//! critical states go first: every waiting state is written before any waiting best-effort
//! message, and a best-effort message is written only while the backlog is empty, so at most
//! one of them is ever ahead of a later state. A best-effort message also never follows a newer
//! state of its topic on the wire (a device that ignores the lane then still sees increasing
//! versions): one still waiting when a newer state of its topic arrives is dropped, and one
//! older than the newest state offered is not taken.
//!
//! Every write to the socket goes through here, as whole frames: the fan-out's direct writes,
//! the task's writes of waiting states, and the WebSocket codec's own frames ([`Mailbox::poll_write`]).
//! When the socket takes a frame only in part, the rest goes to a backlog that is written before
//! anything else, so frames never interleave. The lock is held for one non-blocking write or to
//! swap an `Arc`, never across an `.await`.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use ringside_protocol::Topic;
use ringside_sync_util::LockExt;
use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use crate::hub::EncodedState;

/// The write side of a device's socket as a mailbox drives it: non-blocking writes from any
/// thread (the fan-out's) under the mailbox's lock, and polled ones from the connection's task.
/// A plain TCP socket's write half is one; a TLS session's is another, which encrypts what it
/// takes and may hold records the socket has not taken yet ([`SocketWrite::pending`]).
pub trait SocketWrite: Send + std::fmt::Debug {
    /// Writes what the socket takes now, without waiting; `WouldBlock` when it takes nothing.
    fn try_write(&mut self, bytes: &[u8]) -> io::Result<usize>;
    /// Writes, registering `cx` for the socket's next writable edge when it takes nothing.
    fn poll_write(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>>;
    /// Whether bytes this writer took still wait to reach the socket (a TLS session's records).
    fn pending(&self) -> bool {
        false
    }
    /// Writes what [`SocketWrite::pending`] holds.
    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    /// Shuts the write side (after what is pending).
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl SocketWrite for OwnedWriteHalf {
    fn try_write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        OwnedWriteHalf::try_write(self, bytes)
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(self), cx, bytes)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(self), cx)
    }
}

/// What happened to an offered state or best-effort message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Written to the socket by the offer itself (at least the start of it; a rest the socket
    /// did not take is in the backlog, and the task was woken to write it).
    Written,
    /// Queued for the connection's task to write. `dropped_best_effort`: offering a state, an
    /// unsent older best-effort message of its topic was dropped (the connection is behind,
    /// and it must not follow the newer state).
    Queued { dropped_best_effort: bool },
    /// Queued, replacing an older unsent message of the same topic and lane;
    /// `dropped_best_effort` as for [`Offer::Queued`].
    Conflated { dropped_best_effort: bool },
    /// Dropped: not newer than what the lane already has (a best-effort message: or not newer
    /// than the topic's newest state), not subscribed, or the connection is closing.
    Ignored,
}

impl Offer {
    /// Queued, dropping nothing else.
    pub const QUEUED: Self = Self::Queued {
        dropped_best_effort: false,
    };
    /// Conflated, dropping nothing else.
    pub const CONFLATED: Self = Self::Conflated {
        dropped_best_effort: false,
    };

    /// Whether the offer dropped an unsent best-effort message older than the offered state.
    pub fn dropped_best_effort(self) -> bool {
        matches!(
            self,
            Self::Queued {
                dropped_best_effort: true
            } | Self::Conflated {
                dropped_best_effort: true
            }
        )
    }
}

/// [`Slot::acked_and_flags`]: the device knows it holds the topic (`subscribed` is written),
/// so live messages may go straight to the socket; until then they wait, to follow that answer.
const ANNOUNCED: u64 = 1 << 63;
/// [`Slot::acked_and_flags`]: the waiting state was offered as a catch-up.
const STATE_CATCH_UP: u64 = 1 << 62;
/// [`Slot::acked_and_flags`]: the waiting best-effort message was offered as a catch-up.
const BEST_EFFORT_CATCH_UP: u64 = 1 << 61;
/// [`Slot::acked_and_flags`]: the connection unsubscribed; the slot is kept only to remember
/// what was written to it and acknowledged (see [`Mailbox::close`]).
const CLOSED: u64 = 1 << 60;
/// [`Slot::acked_and_flags`]: the bits of the acknowledged version. Versions are far below
/// 2^60 (the stores derive them from milliseconds since the epoch), and an ack of a version
/// the connection was not offered is never stored.
const ACKED_VERSION: u64 = (1 << 60) - 1;
/// Unsubscribed topics a connection remembers, beyond which the longest-held is forgotten: as
/// many as it may hold at once by default (`max_topics_per_connection`).
const CLOSED_SLOTS_KEPT: usize = 16;

/// One subscribed topic of a connection, held by every connection for every topic: 64 bytes.
/// Both lanes' waiting messages are bare pointers and the flags live in the top bits of the
/// acknowledged version; the one word beyond that is the newest version written, which an ack
/// must match to count.
#[derive(Debug)]
struct Slot {
    topic: Topic,
    /// Newest state version offered to (or held by) the connection.
    newest_version: u64,
    /// Newest best-effort version offered to the connection.
    newest_best_effort: u64,
    /// Newest state version written to the socket (directly or from `pending`), 0 before the
    /// first: `newest_version` also holds the device's `since`, which it was never sent.
    written_version: u64,
    /// Newest version the device acknowledged (`ACKED_VERSION` bits), and the flags
    /// `ANNOUNCED`, `STATE_CATCH_UP`, `BEST_EFFORT_CATCH_UP`.
    acked_and_flags: u64,
    /// The unsent state, if any.
    pending: Option<Arc<EncodedState>>,
    /// The unsent best-effort message, if any.
    pending_best_effort: Option<Arc<EncodedState>>,
}

impl Slot {
    fn flag(&self, flag: u64) -> bool {
        self.acked_and_flags & flag != 0
    }

    fn set_flag(&mut self, flag: u64, on: bool) {
        if on {
            self.acked_and_flags |= flag;
        } else {
            self.acked_and_flags &= !flag;
        }
    }

    fn acked_version(&self) -> u64 {
        self.acked_and_flags & ACKED_VERSION
    }

    /// `state` went to the socket (whole, or its rest into the backlog): its ack may count.
    /// True when this connection had not been written this version (or a newer one) before,
    /// which is when it counts as sent in the version's delivery record.
    fn note_written(&mut self, state: &EncodedState) -> bool {
        if state.is_best_effort() || state.version <= self.written_version {
            return false;
        }
        self.written_version = state.version;
        true
    }

    fn is_open(&self, topic: &Topic) -> bool {
        &self.topic == topic && !self.flag(CLOSED)
    }
}

/// A state (or best-effort message) taken from a mailbox, to send.
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
    socket: Option<Box<dyn SocketWrite>>,
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
    pub fn with_socket(socket: impl SocketWrite + 'static, backlog_limit: usize) -> Arc<Self> {
        Arc::new(Self {
            outbound: Mutex::new(Outbound {
                socket: Some(Box::new(socket)),
                backlog_limit,
                ..Outbound::default()
            }),
            wake: Notify::new(),
        })
    }

    fn outbound(&self) -> std::sync::MutexGuard<'_, Outbound> {
        self.outbound.locked()
    }

    /// Starts accepting states of `topic` newer than `since`, and best-effort messages newer
    /// than it. Returns false when the topic was already open (its position is kept). Live
    /// messages wait until [`Mailbox::announce`]. A topic the connection held before keeps
    /// what was written to it and acknowledged: resubscribing is not a way to be counted twice.
    pub fn open(&self, topic: &Topic, since: u64) -> bool {
        let mut outbound = self.outbound();
        let slots = &mut outbound.slots;
        if let Some(slot) = slots.iter_mut().find(|slot| &slot.topic == topic) {
            if !slot.flag(CLOSED) {
                return false;
            }
            slot.newest_version = since;
            slot.newest_best_effort = since;
            slot.acked_and_flags = slot.acked_version();
            return true;
        }
        // Most connections hold one topic: room for exactly one, not the four a first push
        // reserves (about 190 bytes less per connection).
        if slots.is_empty() {
            slots.reserve_exact(1);
        }
        slots.push(Slot {
            topic: topic.clone(),
            newest_version: since,
            newest_best_effort: since,
            written_version: 0,
            acked_and_flags: 0,
            pending: None,
            pending_best_effort: None,
        });
        true
    }

    /// The device now knows it holds `topic`: later live states may be written directly.
    pub fn announce(&self, topic: &Topic) {
        if let Some(slot) = self.outbound().slots.iter_mut().find(|s| s.is_open(topic)) {
            slot.set_flag(ANNOUNCED, true);
        }
    }

    /// Stops accepting states of `topic` and drops any unsent one. A topic that was written a
    /// state stays remembered (closed) with what was written and acknowledged, for the
    /// [`CLOSED_SLOTS_KEPT`] most recently closed topics.
    pub fn close(&self, topic: &Topic) -> bool {
        let mut outbound = self.outbound();
        let slots = &mut outbound.slots;
        let Some(at) = slots.iter().position(|slot| slot.is_open(topic)) else {
            return false;
        };
        let mut slot = slots.remove(at);
        if slot.written_version == 0 {
            return true;
        }
        slot.pending = None;
        slot.pending_best_effort = None;
        slot.acked_and_flags = slot.acked_version() | CLOSED;
        // Closed slots keep the order they were closed in: the first is the longest-held.
        if slots.iter().filter(|slot| slot.flag(CLOSED)).count() >= CLOSED_SLOTS_KEPT
            && let Some(oldest) = slots.iter().position(|slot| slot.flag(CLOSED))
        {
            slots.remove(oldest);
        }
        slots.push(slot);
        true
    }

    /// The connection is closing: accepts no more states and drops unsent ones, so that no
    /// state can follow its close frame. Writes of its last frames still go through.
    pub fn seal(&self) {
        let mut outbound = self.outbound();
        outbound.sealed = true;
        for slot in &mut outbound.slots {
            slot.pending = None;
            slot.pending_best_effort = None;
        }
    }

    /// Offers a state or best-effort message from a live fan-out: written at once when nothing
    /// waits, else queued (in its lane) and the connection woken.
    pub fn offer(&self, state: &Arc<EncodedState>) -> Offer {
        self.offer_delivery(state, false)
    }

    /// Offers the current state (or the newest best-effort message) to a connection that just
    /// subscribed; it follows the `subscribed` answer, so it is always queued.
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
        let Some(slot) = slots.iter_mut().find(|slot| slot.is_open(&state.topic)) else {
            return Offer::Ignored;
        };
        let best_effort = state.is_best_effort();
        if best_effort {
            // Never behind the topic's newest state: a device that ignores the lane would take
            // an older version for a step back.
            if state.version <= slot.newest_best_effort || state.version <= slot.newest_version {
                return Offer::Ignored;
            }
            slot.newest_best_effort = state.version;
        } else {
            if state.version <= slot.newest_version {
                return Offer::Ignored;
            }
            slot.newest_version = state.version;
        }
        let idle = slot.pending.is_none() && slot.pending_best_effort.is_none();
        let direct = !catch_up && slot.flag(ANNOUNCED) && idle && backlog.is_empty();
        if let (true, Some(socket)) = (direct, socket.as_mut()) {
            match socket.try_write(&state.wire) {
                // A live offer is always newer than what was written (it is newer than what
                // was offered), and the fan-out counts its direct writes once per pass.
                Ok(written) if written == state.wire.len() => {
                    slot.note_written(state);
                    if socket.pending() {
                        // Taken but not all on the wire yet: the task finishes it.
                        drop(outbound);
                        self.wake.notify_one();
                    }
                    return Offer::Written;
                }
                Ok(written) => {
                    slot.note_written(state);
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
        let (replaced, dropped_best_effort) = if best_effort {
            slot.set_flag(BEST_EFFORT_CATCH_UP, catch_up);
            (
                slot.pending_best_effort.replace(state.clone()).is_some(),
                false,
            )
        } else {
            // States go first: a waiting best-effort message older than this state would
            // follow it, a step back in versions. It is dropped.
            let dropped = slot
                .pending_best_effort
                .take_if(|waiting| waiting.version < state.version)
                .is_some();
            slot.set_flag(STATE_CATCH_UP, catch_up);
            (slot.pending.replace(state.clone()).is_some(), dropped)
        };
        drop(outbound);
        self.wake.notify_one();
        if replaced {
            Offer::Conflated {
                dropped_best_effort,
            }
        } else {
            Offer::Queued {
                dropped_best_effort,
            }
        }
    }

    /// Records an ack; true when it is the first ack of the newest state version written to
    /// this connection, so a device cannot inflate delivery counts by repeating acks, by
    /// inventing versions, or by acking the version it subscribed `since` (it was sent
    /// nothing). An ack of an older version that arrives after a newer one was written is
    /// refused too: the slot keeps one word for this, and the newer version's ack counts.
    /// Acks are for states: the critical lane.
    pub fn acknowledge(&self, topic: &Topic, version: u64) -> bool {
        let mut outbound = self.outbound();
        let Some(slot) = outbound.slots.iter_mut().find(|slot| slot.is_open(topic)) else {
            return false;
        };
        let written = version != 0 && version == slot.written_version;
        if !written || version <= slot.acked_version() || version > ACKED_VERSION {
            return false;
        }
        slot.acked_and_flags = (slot.acked_and_flags & !ACKED_VERSION) | version;
        true
    }

    /// Writes pending messages, each as its whole frame: first every waiting state (oldest
    /// topic first), then the waiting best-effort messages. What the socket does not take at
    /// once joins the backlog, for [`Mailbox::poll_flush`] to finish: states up to the backlog's
    /// limit, a best-effort message only into an empty backlog (so states written after it
    /// wait behind one best-effort frame at most). Stops at the first that does not fit;
    /// returns whether every pending message went. Written ones are appended to `sent`. Taking
    /// a message and writing it happen under one lock, so a direct write of a newer version
    /// can never overtake it.
    pub fn write_pending(&self, sent: &mut Vec<Delivery>) -> io::Result<bool> {
        let mut outbound = self.outbound();
        let Outbound {
            slots,
            socket,
            backlog,
            backlog_limit,
            failed,
            ..
        } = &mut *outbound;
        let socket = writable(socket, *failed)?;
        for slot in slots.iter_mut() {
            let Some(state) = &slot.pending else {
                continue;
            };
            if !write_whole(socket, backlog, *backlog_limit, &state.wire, failed)? {
                return Ok(false);
            }
            let Some(state) = slot.pending.take() else {
                continue;
            };
            if slot.note_written(&state) {
                state.count_sent(1);
            }
            let catch_up = slot.flag(STATE_CATCH_UP);
            sent.push(Delivery { state, catch_up });
        }
        for slot in slots.iter_mut() {
            let Some(message) = &slot.pending_best_effort else {
                continue;
            };
            if !write_whole(socket, backlog, 0, &message.wire, failed)? {
                return Ok(false);
            }
            let catch_up = slot.flag(BEST_EFFORT_CATCH_UP);
            sent.extend(
                slot.pending_best_effort
                    .take()
                    .map(|state| Delivery { state, catch_up }),
            );
        }
        Ok(true)
    }

    /// Moves every pending message into `out` without writing it, in the order
    /// [`Mailbox::write_pending`] writes them: states first (oldest topic first), then
    /// best-effort messages.
    pub fn take_pending(&self, out: &mut Vec<Delivery>) {
        let mut outbound = self.outbound();
        for slot in &mut outbound.slots {
            let Some(state) = slot.pending.take() else {
                continue;
            };
            if slot.note_written(&state) {
                state.count_sent(1);
            }
            let catch_up = slot.flag(STATE_CATCH_UP);
            out.push(Delivery { state, catch_up });
        }
        for slot in &mut outbound.slots {
            let catch_up = slot.flag(BEST_EFFORT_CATCH_UP);
            out.extend(
                slot.pending_best_effort
                    .take()
                    .map(|state| Delivery { state, catch_up }),
            );
        }
    }

    /// Wakes the connection's task to write what waits (its socket writer's pending bytes).
    pub fn wake_task(&self) {
        self.wake.notify_one();
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
        if written < frames.len() || socket.pending() {
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
        socket.poll_shutdown(cx)
    }
}

/// Writes `frame` whole: into an empty backlog at once (what the socket does not take joins the
/// backlog), else appended to the backlog if it stays within `limit`. False when it does not
/// fit: nothing was taken.
fn write_whole(
    socket: &mut Box<dyn SocketWrite>,
    backlog: &mut BytesMut,
    limit: usize,
    frame: &[u8],
    failed: &mut bool,
) -> io::Result<bool> {
    if backlog.is_empty() {
        match socket.try_write(frame) {
            Ok(written) => backlog.extend_from_slice(&frame[written..]),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                backlog.extend_from_slice(frame);
            }
            Err(error) => {
                *failed = true;
                return Err(error);
            }
        }
        return Ok(true);
    }
    if backlog.len() + frame.len() > limit {
        return Ok(false);
    }
    backlog.extend_from_slice(frame);
    Ok(true)
}

fn writable(
    socket: &mut Option<Box<dyn SocketWrite>>,
    failed: bool,
) -> io::Result<&mut Box<dyn SocketWrite>> {
    match socket {
        Some(socket) if !failed => Ok(socket),
        Some(_) => Err(io::ErrorKind::BrokenPipe.into()),
        None => Err(io::ErrorKind::NotConnected.into()),
    }
}

/// Writes the backlog, then what the writer holds, until both are empty or the socket is full
/// (then the task is registered for its next writable edge).
fn drain(
    socket: &mut Box<dyn SocketWrite>,
    backlog: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    if !backlog.is_empty() {
        while !backlog.is_empty() {
            let written = ready!(socket.poll_write(cx, backlog))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            backlog.advance(written);
        }
        // A backlog is rare: give its memory back rather than keep it on every connection that
        // once had one.
        *backlog = BytesMut::new();
    }
    socket.poll_flush(cx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringside_protocol::{EventState, Payload, Stage};
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    fn encoded(topic: &str, version: u64) -> Arc<EncodedState> {
        encoded_in(topic, version, ringside_protocol::Priority::Critical)
    }

    fn best_effort(topic: &str, version: u64) -> Arc<EncodedState> {
        encoded_in(topic, version, ringside_protocol::Priority::BestEffort)
    }

    fn encoded_in(
        topic: &str,
        version: u64,
        priority: ringside_protocol::Priority,
    ) -> Arc<EncodedState> {
        Arc::new(EncodedState::encode(&EventState {
            topic: Topic::parse(topic).expect("topic"),
            version,
            stage: Stage::parse("LIVE").expect("stage"),
            published_at_ms: 0,
            payload: Payload::empty(),
            priority,
            fetch_within_ms: None,
        }))
    }

    /// A stage state with a delivery record, as the hub makes one current.
    fn recorded(
        topic: &str,
        version: u64,
    ) -> (Arc<EncodedState>, Arc<crate::record::DeliveryRecord>) {
        let mut state = Arc::into_inner(encoded(topic, version)).expect("only reference");
        let record = Arc::new(crate::record::DeliveryRecord::new(
            state.topic.clone(),
            version,
            Stage::parse("LIVE").expect("stage"),
            0,
            1,
        ));
        state.record = Some(record.clone());
        (Arc::new(state), record)
    }

    /// Pending messages as (topic, version, best-effort), in the order they would be written.
    fn pending_lanes(mailbox: &Mailbox) -> Vec<(String, u64, bool)> {
        let mut out = Vec::new();
        mailbox.take_pending(&mut out);
        out.iter()
            .map(|d| {
                let state = &d.state;
                (
                    state.topic.to_string(),
                    state.version,
                    state.is_best_effort(),
                )
            })
            .collect()
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
        assert_eq!(mailbox.offer(&encoded("event:a", 1)), Offer::QUEUED);
        assert_eq!(mailbox.offer(&encoded("event:b", 1)), Offer::QUEUED);
        assert_eq!(mailbox.offer(&encoded("event:a", 2)), Offer::CONFLATED);
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
        assert_eq!(mailbox.offer(&encoded("event:a", 7)), Offer::QUEUED);
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

    /// A writer like a TLS session's: it takes every frame whole, but holds the bytes until it
    /// is flushed.
    #[derive(Debug, Default)]
    struct Holding {
        held: Arc<Mutex<Vec<u8>>>,
        flushed: Arc<Mutex<Vec<u8>>>,
    }

    impl SocketWrite for Holding {
        fn try_write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.held.locked().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn poll_write(&mut self, _cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
            Poll::Ready(self.try_write(bytes))
        }
        fn pending(&self) -> bool {
            !self.held.locked().is_empty()
        }
        fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let held = std::mem::take(&mut *self.held.locked());
            self.flushed.locked().extend_from_slice(&held);
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    #[tokio::test]
    async fn a_direct_write_the_writer_still_holds_wakes_the_task_to_flush_it() {
        let writer = Holding::default();
        let flushed = writer.flushed.clone();
        let mailbox = Mailbox::with_socket(writer, 64 * 1024);
        let a = Topic::parse("event:a").expect("topic");
        mailbox.open(&a, 0);
        mailbox.announce(&a);
        let state = encoded("event:a", 1);
        assert_eq!(mailbox.offer(&state), Offer::Written);
        // Nothing is on the wire yet: the offer woke the task, whose flush sends it.
        tokio::time::timeout(std::time::Duration::from_secs(5), mailbox.ready())
            .await
            .expect("the task is woken");
        std::future::poll_fn(|cx| mailbox.poll_flush(cx))
            .await
            .expect("flushed");
        assert_eq!(*flushed.locked(), state.wire.to_vec());
    }

    #[tokio::test]
    async fn an_idle_announced_connection_gets_live_states_written_directly() {
        let (mailbox, mut peer) = connected(64 * 1024).await;
        let a = Topic::parse("event:a").expect("topic");
        mailbox.open(&a, 0);
        // Before `subscribed` is written, live states wait for the task.
        let first = encoded("event:a", 1);
        assert_eq!(mailbox.offer(&first), Offer::QUEUED);
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
            Offer::QUEUED
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
        assert_eq!(mailbox.offer(&encoded("event:a", 1)), Offer::QUEUED);
        assert_eq!(mailbox.offer(&encoded("event:a", 2)), Offer::CONFLATED);
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

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_slot_stays_64_bytes_with_two_lanes_and_the_written_version() {
        // Held per connection per topic: the memory of an idle connection.
        assert_eq!(std::mem::size_of::<Slot>(), 64);
    }

    #[test]
    fn acks_count_once_per_offered_version_and_keep_the_flags() {
        let mailbox = Mailbox::new();
        let a = Topic::parse("event:a").expect("topic");
        mailbox.open(&a, 0);
        mailbox.announce(&a);
        assert_eq!(
            mailbox.offer_catch_up(&encoded("event:a", 5)),
            Offer::QUEUED
        );
        assert!(!mailbox.acknowledge(&a, 5), "not sent yet");
        let mut taken = Vec::new();
        mailbox.take_pending(&mut taken);
        assert!(taken[0].catch_up);
        assert!(mailbox.acknowledge(&a, 5));
        assert!(!mailbox.acknowledge(&a, 5), "counted once");
        assert!(!mailbox.acknowledge(&a, 6), "never offered");
        assert!(!mailbox.acknowledge(&a, u64::MAX), "never offered");
        assert!(!mailbox.acknowledge(&a, 0), "nothing is version 0");
        // The flags survived the ack: still announced, and a live state is not a catch-up.
        assert_eq!(mailbox.offer(&encoded("event:a", 7)), Offer::QUEUED);
        mailbox.take_pending(&mut taken);
        assert!(!taken[1].catch_up);
        let slots = &mailbox.outbound().slots;
        assert!(slots[0].flag(ANNOUNCED));
        assert_eq!(slots[0].acked_version(), 5);
    }

    #[test]
    fn each_lane_keeps_its_own_newest_version_and_conflates_on_its_own() {
        let mailbox = Mailbox::new();
        let a = Topic::parse("event:a").expect("topic");
        mailbox.open(&a, 0);
        assert_eq!(mailbox.offer(&encoded("event:a", 1)), Offer::QUEUED);
        assert_eq!(mailbox.offer(&best_effort("event:a", 2)), Offer::QUEUED);
        assert_eq!(mailbox.offer(&best_effort("event:a", 3)), Offer::CONFLATED);
        assert_eq!(
            pending_lanes(&mailbox),
            vec![("event:a".into(), 1, false), ("event:a".into(), 3, true)]
        );
        // A best-effort message does not hold back a later state with a lower version (an
        // upstream reordering): it is never dropped for a best-effort message.
        assert_eq!(mailbox.offer(&best_effort("event:a", 5)), Offer::QUEUED);
        assert_eq!(mailbox.offer(&encoded("event:a", 4)), Offer::QUEUED);
        assert_eq!(
            pending_lanes(&mailbox),
            vec![("event:a".into(), 4, false), ("event:a".into(), 5, true)]
        );
        // Nor does a state hold back a later best-effort message; but one not newer than the
        // newest state is not taken, and repeats are not either.
        assert_eq!(mailbox.offer(&encoded("event:a", 6)), Offer::QUEUED);
        assert_eq!(mailbox.offer(&best_effort("event:a", 5)), Offer::Ignored);
        assert_eq!(mailbox.offer(&best_effort("event:a", 6)), Offer::Ignored);
        assert_eq!(mailbox.offer(&best_effort("event:a", 7)), Offer::QUEUED);
        // A newer state arriving while an older best-effort message waits drops it: states go
        // first, and the message must not follow a newer version.
        assert_eq!(
            mailbox.offer(&encoded("event:a", 8)),
            Offer::Conflated {
                dropped_best_effort: true
            }
        );
        assert_eq!(pending_lanes(&mailbox), vec![("event:a".into(), 8, false)]);
        // `since` covers both lanes.
        let b = Topic::parse("event:b").expect("topic");
        mailbox.open(&b, 10);
        assert_eq!(mailbox.offer(&best_effort("event:b", 10)), Offer::Ignored);
        assert_eq!(mailbox.offer(&best_effort("event:b", 11)), Offer::QUEUED);
        mailbox.seal();
        assert!(pending_lanes(&mailbox).is_empty());
    }

    #[tokio::test]
    async fn with_a_full_socket_states_go_first_and_best_effort_waits_for_an_empty_backlog() {
        let (mailbox, peer) = connected(1 << 20).await;
        let (a, b) = (
            Topic::parse("event:a").expect("topic"),
            Topic::parse("event:b").expect("topic"),
        );
        for topic in [&a, &b] {
            mailbox.open(topic, 0);
            mailbox.announce(topic);
        }
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
        // Behind: everything waits, each lane conflated to its newest.
        assert_eq!(mailbox.offer(&best_effort("event:a", 2)), Offer::QUEUED);
        assert_eq!(mailbox.offer(&encoded("event:b", 1)), Offer::QUEUED);
        assert_eq!(mailbox.offer(&best_effort("event:b", 3)), Offer::QUEUED);
        assert_eq!(
            mailbox.offer(&encoded("event:a", 4)),
            Offer::Queued {
                dropped_best_effort: true
            }
        );
        assert_eq!(mailbox.offer(&best_effort("event:a", 5)), Offer::QUEUED);
        assert_eq!(mailbox.offer(&best_effort("event:a", 6)), Offer::CONFLATED);
        // The states join the backlog behind the filler; the best-effort messages wait for
        // the backlog to be written.
        let mut sent = Vec::new();
        assert!(!mailbox.write_pending(&mut sent).expect("write"));
        let versions = |sent: &[Delivery]| sent.iter().map(|d| d.state.version).collect::<Vec<_>>();
        assert_eq!(versions(&sent), vec![4, 1]);
        let states = [
            encoded("event:a", 4).wire.to_vec(),
            encoded("event:b", 1).wire.to_vec(),
        ]
        .concat();
        let expected = written + states.len();
        let reader = tokio::spawn(async move {
            let mut peer = peer;
            let bytes = read_exactly(&mut peer, expected).await;
            (peer, bytes)
        });
        std::future::poll_fn(|cx| mailbox.poll_flush(cx))
            .await
            .expect("flush");
        let (mut peer, received) = reader.await.expect("reader");
        assert_eq!(&received[written..], &states[..]);
        // Now the backlog is empty: the newest best-effort message of each topic goes.
        assert!(mailbox.write_pending(&mut sent).expect("write"));
        assert_eq!(versions(&sent), vec![4, 1, 6, 3]);
        std::future::poll_fn(|cx| mailbox.poll_flush(cx))
            .await
            .expect("flush");
        let extras = [
            best_effort("event:a", 6).wire.to_vec(),
            best_effort("event:b", 3).wire.to_vec(),
        ]
        .concat();
        assert_eq!(read_exactly(&mut peer, extras.len()).await, extras);
        assert!(pending_lanes(&mailbox).is_empty());
    }

    #[test]
    fn an_ack_of_the_version_subscribed_since_is_refused() {
        let mailbox = Mailbox::new();
        let a = Topic::parse("event:a").expect("topic");
        // Subscribed with `since` equal to the current version: nothing is sent.
        mailbox.open(&a, 5);
        mailbox.announce(&a);
        assert_eq!(
            mailbox.offer_catch_up(&encoded("event:a", 5)),
            Offer::Ignored
        );
        assert!(!mailbox.acknowledge(&a, 5), "never written");
        assert!(!mailbox.acknowledge(&a, 4), "never written");
    }

    #[tokio::test]
    async fn an_ack_of_a_version_written_directly_counts_once() {
        let (mailbox, _peer) = connected(64 * 1024).await;
        let a = Topic::parse("event:a").expect("topic");
        mailbox.open(&a, 0);
        mailbox.announce(&a);
        assert_eq!(mailbox.offer(&encoded("event:a", 3)), Offer::Written);
        assert!(mailbox.acknowledge(&a, 3), "written live");
        assert!(!mailbox.acknowledge(&a, 3), "repeated");
        assert!(!mailbox.acknowledge(&a, 2), "older, never written");
    }

    #[tokio::test]
    async fn resubscribing_is_neither_a_second_send_nor_a_second_ack_of_a_version() {
        let (mailbox, _peer) = connected(64 * 1024).await;
        let a = Topic::parse("event:a").expect("topic");
        let (state, record) = recorded("event:a", 4);
        mailbox.open(&a, 0);
        assert_eq!(mailbox.offer_catch_up(&state), Offer::QUEUED);
        let mut sent = Vec::new();
        assert!(mailbox.write_pending(&mut sent).expect("write"));
        assert!(mailbox.acknowledge(&a, 4));
        assert_eq!((record.sent(), sent.len()), (1, 1));
        // Unsubscribe, and subscribe again from nothing: the state is written again (the
        // device asked for it) but counts neither as sent nor as acknowledged a second time.
        assert!(mailbox.close(&a));
        assert!(!mailbox.acknowledge(&a, 4), "not subscribed");
        assert!(mailbox.open(&a, 0), "open again");
        assert!(!mailbox.open(&a, 0), "already open");
        assert_eq!(mailbox.offer_catch_up(&state), Offer::QUEUED);
        assert!(mailbox.write_pending(&mut sent).expect("write"));
        assert_eq!(
            (record.sent(), sent.len()),
            (1, 2),
            "written twice, counted once"
        );
        assert!(!mailbox.acknowledge(&a, 4), "acknowledged before");
        // A newer version counts as ever.
        let (newer, newer_record) = recorded("event:a", 5);
        assert_eq!(mailbox.offer_catch_up(&newer), Offer::QUEUED);
        assert!(mailbox.write_pending(&mut sent).expect("write"));
        assert!(mailbox.acknowledge(&a, 5));
        assert_eq!(newer_record.sent(), 1);
    }

    #[test]
    fn a_connection_remembers_a_bounded_number_of_closed_topics() {
        let mailbox = Mailbox::new();
        for n in 0..CLOSED_SLOTS_KEPT + 8 {
            let topic = Topic::parse(&format!("event:t{n}")).expect("topic");
            mailbox.open(&topic, 0);
            mailbox.offer_catch_up(&encoded(topic.as_str(), 3));
            mailbox.take_pending(&mut Vec::new());
            mailbox.close(&topic);
        }
        let slots = &mailbox.outbound().slots;
        assert_eq!(slots.len(), CLOSED_SLOTS_KEPT);
        assert!(slots.iter().all(|slot| slot.flag(CLOSED)));
        // The longest-held went first.
        assert_eq!(slots[0].topic.as_str(), "event:t8");
    }

    #[test]
    fn a_topic_never_written_leaves_nothing_behind_when_closed() {
        let mailbox = Mailbox::new();
        let a = Topic::parse("event:a").expect("topic");
        mailbox.open(&a, 0);
        assert!(mailbox.close(&a));
        assert!(!mailbox.close(&a), "closed already");
        assert!(mailbox.outbound().slots.is_empty());
    }

    #[tokio::test]
    async fn an_ack_of_a_queued_version_counts_only_once_it_is_written() {
        let (mailbox, _peer) = connected(64 * 1024).await;
        let a = Topic::parse("event:a").expect("topic");
        mailbox.open(&a, 1);
        assert_eq!(
            mailbox.offer_catch_up(&encoded("event:a", 4)),
            Offer::QUEUED
        );
        assert!(!mailbox.acknowledge(&a, 4), "still waiting");
        assert!(!mailbox.acknowledge(&a, 1), "the since version");
        let mut sent = Vec::new();
        assert!(mailbox.write_pending(&mut sent).expect("write"));
        assert!(mailbox.acknowledge(&a, 4), "written as a catch-up");
        assert!(!mailbox.acknowledge(&a, 4), "repeated");
        // A best-effort message written after it takes nothing from the state's ack.
        mailbox.announce(&a);
        assert_eq!(mailbox.offer(&best_effort("event:a", 5)), Offer::Written);
        assert!(!mailbox.acknowledge(&a, 5), "acks are for states");
    }
}
