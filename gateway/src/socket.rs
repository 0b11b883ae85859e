//! A device's socket as the WebSocket codec sees it: reads come from the socket's read half (or,
//! over TLS, the connection's TLS session), writes go through the connection's [`Mailbox`],
//! which owns the write side and also takes the fan-out's direct writes, so that the codec's
//! frames and the fan-out's never interleave.
//!
//! Reads are held to the connection's inbound byte rate: past its budget the socket is not
//! read for a while, so the kernel's flow control holds the sender back instead of the node
//! spending CPU on what it sends.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use ringside_broadcaster::Mailbox;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::time::{Instant, Sleep};

use crate::Gateway;
use crate::rate::RateBudget;
use crate::tls::{TlsSession, TlsWriter};

/// Where a connection's bytes come from.
#[derive(Debug)]
enum ReadSide {
    Plain(OwnedReadHalf),
    /// Decrypted by the session the mailbox's writer shares.
    Tls(Arc<TlsSession>),
}

#[derive(Debug)]
pub(crate) struct DeviceSocket {
    read: ReadSide,
    mailbox: Arc<Mailbox>,
    /// For the inbound byte rate and the byte count.
    gateway: Arc<Gateway>,
    /// The inbound byte rate's budget.
    inbound_bytes: RateBudget,
    /// While the connection is over its byte budget: when reading resumes. Boxed, and only
    /// there while paused, so that an ordinary connection carries one pointer.
    paused: Option<Pin<Box<Sleep>>>,
}

impl DeviceSocket {
    /// Splits `stream`: its write side goes to a new mailbox, which may hold up to
    /// `backlog_limit` bytes the socket has not taken yet.
    pub(crate) fn new(
        stream: TcpStream,
        backlog_limit: usize,
        gateway: Arc<Gateway>,
    ) -> (Self, Arc<Mailbox>) {
        let (read, write) = stream.into_split();
        let mailbox = Mailbox::with_socket(write, backlog_limit);
        (
            Self::reading(ReadSide::Plain(read), &mailbox, gateway),
            mailbox,
        )
    }

    /// The same over TLS: `session`'s writes go to a new mailbox, its reads to the codec.
    pub(crate) fn tls(
        session: Arc<TlsSession>,
        backlog_limit: usize,
        gateway: Arc<Gateway>,
    ) -> (Self, Arc<Mailbox>) {
        let mailbox = Mailbox::with_socket(TlsWriter::new(session.clone()), backlog_limit);
        (
            Self::reading(ReadSide::Tls(session), &mailbox, gateway),
            mailbox,
        )
    }

    fn reading(read: ReadSide, mailbox: &Arc<Mailbox>, gateway: Arc<Gateway>) -> Self {
        Self {
            read,
            mailbox: mailbox.clone(),
            gateway,
            inbound_bytes: RateBudget::new(Instant::now()),
            paused: None,
        }
    }

    /// Charges `bytes` just read to the inbound byte rate; past the burst, reading pauses until
    /// the budget is back under it. Also charged with the bytes hyper read behind the upgrade
    /// request, which reach the codec without passing through here.
    pub(crate) fn charge_inbound(&mut self, bytes: usize) {
        let config = &self.gateway.config;
        self.gateway.metrics.bytes_received.add(bytes as u64);
        let over = self.inbound_bytes.charge(
            Instant::now(),
            bytes as u64,
            config.inbound_bytes_per_s,
            config.inbound_byte_burst,
        );
        if let Some(back_within_burst) = over {
            self.gateway.metrics.inbound_throttled.increment();
            self.paused = Some(Box::pin(tokio::time::sleep_until(back_within_burst)));
        }
    }
}

impl AsyncRead for DeviceSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(paused) = this.paused.as_mut() {
            ready!(paused.as_mut().poll(cx));
            this.paused = None;
        }
        let before = buf.filled().len();
        let polled = match &mut this.read {
            ReadSide::Plain(read) => Pin::new(read).poll_read(cx, buf),
            ReadSide::Tls(session) => session.poll_read(cx, buf, &this.mailbox),
        };
        let read = buf.filled().len() - before;
        if read > 0 {
            this.charge_inbound(read);
        }
        polled
    }
}

impl AsyncWrite for DeviceSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.mailbox.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.mailbox.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.mailbox.poll_shutdown(cx)
    }
}
