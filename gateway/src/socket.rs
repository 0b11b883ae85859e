//! A device's socket as the WebSocket codec sees it: reads come from the socket's read half,
//! writes go through the connection's [`Mailbox`], which owns the write half and also takes the
//! fan-out's direct writes, so that the codec's frames and the fan-out's never interleave.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use broadcaster::Mailbox;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

#[derive(Debug)]
pub(crate) struct DeviceSocket {
    read: OwnedReadHalf,
    mailbox: Arc<Mailbox>,
}

impl DeviceSocket {
    /// Splits `stream`: its write side goes to a new mailbox, which may hold up to
    /// `backlog_limit` bytes the socket has not taken yet.
    pub(crate) fn new(stream: TcpStream, backlog_limit: usize) -> (Self, Arc<Mailbox>) {
        let (read, write) = stream.into_split();
        let mailbox = Mailbox::with_socket(write, backlog_limit);
        (
            Self {
                read,
                mailbox: mailbox.clone(),
            },
            mailbox,
        )
    }
}

impl AsyncRead for DeviceSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
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
