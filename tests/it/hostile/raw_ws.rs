//! A WebSocket client over a bare `TcpStream`, for what a well-behaved client library will not
//! send: malformed frames, floods written as one buffer, handshakes trickled byte by byte.
//! Client frames carry the all-zero mask key (valid, and it leaves the payload readable).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;

use ringside_protocol::ServerFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// One client frame: `fin`, `opcode` and `payload`, masked with the zero key.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(payload.len() + 14);
    bytes.push(if fin { 0x80 } else { 0 } | opcode);
    match payload.len() {
        len @ 0..=125 => bytes.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            bytes.push(0x80 | 126);
            bytes.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            bytes.push(0x80 | 127);
            bytes.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    bytes.extend_from_slice(payload);
    bytes
}

pub fn text(payload: &str) -> Vec<u8> {
    frame(true, OP_TEXT, payload.as_bytes())
}

/// The upgrade request for `token`, as bytes.
pub fn upgrade_request(token: &str) -> Vec<u8> {
    format!(
        "GET /v1/ws?token={token} HTTP/1.1\r\nHost: ringside\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes()
}

/// What the server sent, frame by frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Text(String),
    Binary(usize),
    Ping,
    Pong,
    Close(u16, String),
}

/// The reading side: a buffered read half that parses server (unmasked) frames.
pub struct RawReader {
    read: BufReader<OwnedReadHalf>,
}

/// An upgraded connection, split so that a flood can be written while the answers are read.
pub struct RawWs {
    pub reader: RawReader,
    pub writer: OwnedWriteHalf,
}

impl RawWs {
    /// Connects, upgrades with `token` and asserts the `101`; the `welcome` is left unread.
    pub async fn connect(addr: SocketAddr, token: &str) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (read, mut writer) = stream.into_split();
        writer.write_all(&upgrade_request(token)).await.unwrap();
        let mut reader = RawReader {
            read: BufReader::new(read),
        };
        let head = reader.read_http_head().await;
        assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        Self { reader, writer }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await
    }
}

impl RawReader {
    pub fn new(read: OwnedReadHalf) -> Self {
        Self {
            read: BufReader::new(read),
        }
    }

    /// The HTTP response head, up to and including the blank line (read byte by byte so that
    /// no frame behind it is consumed).
    pub async fn read_http_head(&mut self) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(self.read.read_u8().await.unwrap());
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    /// The next server frame, or `None` once the server closed the TCP connection.
    pub async fn next(&mut self) -> Option<Received> {
        let first = self.read.read_u8().await.ok()?;
        let second = self.read.read_u8().await.ok()?;
        let len = match second & 0x7F {
            126 => u64::from(self.read.read_u16().await.ok()?),
            127 => self.read.read_u64().await.ok()?,
            len => u64::from(len),
        };
        let mut payload = vec![0; usize::try_from(len).unwrap()];
        self.read.read_exact(&mut payload).await.ok()?;
        Some(match first & 0x0F {
            OP_TEXT => Received::Text(String::from_utf8(payload).unwrap()),
            OP_BINARY => Received::Binary(payload.len()),
            OP_PING => Received::Ping,
            OP_PONG => Received::Pong,
            OP_CLOSE if payload.len() >= 2 => Received::Close(
                u16::from_be_bytes([payload[0], payload[1]]),
                String::from_utf8_lossy(&payload[2..]).into_owned(),
            ),
            OP_CLOSE => Received::Close(1005, String::new()),
            other => panic!("server sent opcode {other:#x}"),
        })
    }

    /// Reads until the close frame: the protocol frames before it (pings and pongs skipped)
    /// and the close code and reason; `None` for the close when the TCP connection ended
    /// without one.
    pub async fn until_close(&mut self) -> (Vec<ServerFrame>, Option<(u16, String)>) {
        let mut frames = Vec::new();
        loop {
            match self.next().await {
                None => return (frames, None),
                Some(Received::Close(code, reason)) => return (frames, Some((code, reason))),
                Some(Received::Text(text)) => frames.push(ServerFrame::decode(&text).unwrap()),
                Some(_) => {}
            }
        }
    }
}

/// A connection whose writing side is a plain blocking-style socket for a thread of its own
/// (see [`Flood`]); the tokio write half is only kept so that the socket stays open.
pub struct RawFlooder {
    pub reader: RawReader,
    pub stream: std::net::TcpStream,
    pub keep_open: OwnedWriteHalf,
}

impl RawFlooder {
    /// Connects and upgrades like [`RawWs::connect`].
    pub async fn connect(addr: SocketAddr, token: &str) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let std_stream = stream.into_std().unwrap();
        let flood_stream = std_stream.try_clone().unwrap();
        let (read, mut write) = TcpStream::from_std(std_stream).unwrap().into_split();
        write.write_all(&upgrade_request(token)).await.unwrap();
        let mut reader = RawReader::new(read);
        let head = reader.read_http_head().await;
        assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        Self {
            reader,
            stream: flood_stream,
            keep_open: write,
        }
    }
}

/// Writes a buffer of whole frames over and over from an OS thread of its own, woken by the
/// kernel rather than by the runtime the server shares, so that the server's socket never runs
/// dry. Stops when the server stops taking bytes, when dropped, or after a generous bound.
pub struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Flood {
    pub fn start(mut stream: std::net::TcpStream, frames: Vec<u8>) -> Self {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let (mut offset, mut written) = (0, 0u64);
            while !stopped.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                // The socket is non-blocking (it is shared with the runtime's reader).
                match stream.write(&frames[offset..]) {
                    Ok(0) => break,
                    Ok(n) => {
                        written += n as u64;
                        offset = (offset + n) % frames.len();
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::yield_now();
                    }
                    Err(_) => break,
                }
            }
            written
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the flood; returns the bytes written.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap())
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
