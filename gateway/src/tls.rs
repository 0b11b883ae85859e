//! A device connection over TLS. The fan-out writes the frame bytes the hub encoded once for
//! every connection; over TLS each connection still needs them encrypted under its own keys,
//! so the mailbox's writes go through the connection's rustls session instead of straight to
//! the socket. One session is shared by the socket's read side (the codec's reads) and its write
//! side (the mailbox: the fan-out's direct writes and the task's), and each takes the session's
//! lock for one non-blocking step: a write encrypts one frame and offers the records to the
//! socket, a read decrypts what the socket has.
//!
//! The mailbox's rules hold as on plain TCP: a frame is taken whole or not at all while records
//! of an earlier one still wait for the socket (the socket is "full", so the mailbox conflates),
//! and records the socket did not take are [`SocketWrite::pending`], written by the
//! connection's task. Lock order: the mailbox's, then the session's; the read side takes only
//! the session's.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use ringside_broadcaster::{Mailbox, SocketWrite};
use ringside_sync_util::LockExt;
use rustls::ServerConnection;
use tokio::io::ReadBuf;
use tokio::net::TcpStream;

/// The socket and the TLS session of one device connection.
#[derive(Debug)]
pub(crate) struct TlsSession {
    tcp: TcpStream,
    tls: Mutex<ServerConnection>,
}

/// `io::Read` and `io::Write` over the socket without waiting: `WouldBlock` when it has nothing
/// to give or no room (and tokio's readiness for that direction is cleared).
struct Nonblocking<'a>(&'a TcpStream);

impl Read for Nonblocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Nonblocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsSession {
    pub(crate) fn new(tcp: TcpStream, tls: ServerConnection) -> Arc<Self> {
        Arc::new(Self {
            tcp,
            tls: Mutex::new(tls),
        })
    }

    /// Offers the session's encrypted records to the socket until none wait (true) or the
    /// socket is full (false).
    fn write_records(&self, tls: &mut ServerConnection) -> io::Result<bool> {
        while tls.wants_write() {
            match tls.write_tls(&mut Nonblocking(&self.tcp)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(error) => return Err(error),
            }
        }
        Ok(true)
    }

    /// Reads decrypted bytes into `buf`; nothing read means the device closed the connection.
    /// Records the session answers with by itself (an alert, a key update) that the socket does
    /// not take at once are left to `mailbox`'s task, which this wakes.
    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        mailbox: &Mailbox,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut tls = self.tls.locked();
            match tls.reader().read(buf.initialize_unfilled()) {
                Ok(read) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                // The socket ended without a close_notify: the end of the stream all the same
                // (the WebSocket close handshake, not TLS's, says whether it was clean).
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(Ok(()));
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
            match tls.read_tls(&mut Nonblocking(&self.tcp)) {
                // At the socket's end the reader reports it on the next turn.
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    drop(tls);
                    ready!(self.tcp.poll_read_ready(cx))?;
                    continue;
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
            let processed = tls.process_new_packets();
            let written = self.write_records(&mut tls);
            if let Ok(false) = written {
                mailbox.wake_task();
            }
            if let Err(error) = processed {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)));
            }
            written?;
        }
    }
}

/// The write side the mailbox drives for a TLS connection.
#[derive(Debug)]
pub(crate) struct TlsWriter {
    session: Arc<TlsSession>,
    /// Records this writer's last write left for the socket: what [`SocketWrite::pending`]
    /// answers without taking the session's lock again (records the read side queues wake the
    /// task by themselves).
    records_waiting: bool,
    /// The close_notify alert is queued.
    closing: bool,
}

impl TlsWriter {
    pub(crate) fn new(session: Arc<TlsSession>) -> Self {
        Self {
            session,
            records_waiting: false,
            closing: false,
        }
    }
}

impl SocketWrite for TlsWriter {
    fn try_write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let session = &*self.session;
        let mut tls = session.tls.locked();
        if !session.write_records(&mut tls)? {
            self.records_waiting = true;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let taken = tls.writer().write(bytes)?;
        if taken == 0 && !bytes.is_empty() {
            // No records wait, so the session has room: it refusing is not the socket being
            // full (a WouldBlock here would spin its caller on a writable socket).
            return Err(io::ErrorKind::WriteZero.into());
        }
        // Records the socket does not take now stay pending, for the task to write.
        self.records_waiting = !session.write_records(&mut tls)?;
        Ok(taken)
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            match self.try_write(bytes) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.session.tcp.poll_write_ready(cx))?;
                }
                written => return Poll::Ready(written),
            }
        }
    }

    fn pending(&self) -> bool {
        self.records_waiting
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let session = &*self.session;
            let all_out = session.write_records(&mut session.tls.locked())?;
            self.records_waiting = !all_out;
            if all_out {
                return Poll::Ready(Ok(()));
            }
            ready!(session.tcp.poll_write_ready(cx))?;
        }
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.closing {
            self.session.tls.locked().send_close_notify();
            self.closing = true;
        }
        ready!(self.poll_flush(cx))?;
        Poll::Ready(socket2::SockRef::from(&self.session.tcp).shutdown(std::net::Shutdown::Write))
    }
}
