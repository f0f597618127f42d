//! Async client of a sandbox's init socket.

use sandstone_init::proto::{ErrorCode, Request, Response, encode, lengths};
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

pub struct InitConn {
    stream: UnixStream,
    /// Bytes read but not yet returned as a frame: what makes `recv`
    /// cancel-safe, so a `select!` that drops it mid-frame loses nothing.
    buf: Vec<u8>,
}

impl InitConn {
    pub async fn connect(socket: &Path) -> std::io::Result<InitConn> {
        Ok(InitConn {
            stream: UnixStream::connect(socket).await?,
            buf: Vec::new(),
        })
    }

    pub async fn send(&mut self, req: &Request, payload: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(&encode(req, payload)).await
    }

    /// The next frame of the answer. Cancel-safe.
    pub async fn recv(&mut self) -> std::io::Result<(Response, Vec<u8>)> {
        loop {
            if let Some(prefix) = self.buf.first_chunk::<8>() {
                let (hl, pl) = lengths(*prefix)?;
                let end = 8 + hl + pl;
                if self.buf.len() >= end {
                    // The frame keeps the buffer's allocation; only bytes of a
                    // following frame, if any, are copied out.
                    let rest = self.buf.split_off(end);
                    let mut frame = std::mem::replace(&mut self.buf, rest);
                    let payload = frame.split_off(8 + hl);
                    let header = serde_json::from_slice(&frame[8..])
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                    return Ok((header, payload));
                }
                self.buf.reserve(end - self.buf.len());
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// Why a request to a sandbox's init got no answer.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Lost contact with init (it died, or the sandbox is being torn down).
    #[error("sandbox init unreachable: {0}")]
    Unreachable(#[from] std::io::Error),
    /// Init answered with an error: a missing path, a busy process...
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
}

/// One request, one terminal answer.
pub async fn call(
    socket: &Path,
    req: &Request,
    payload: &[u8],
) -> Result<(Response, Vec<u8>), InitError> {
    let mut c = InitConn::connect(socket).await?;
    c.send(req, payload).await?;
    loop {
        let (resp, body) = c.recv().await?;
        match resp {
            Response::Error { code, message } => return Err(InitError::Refused { code, message }),
            r if r.is_terminal() => return Ok((r, body)),
            _ => continue,
        }
    }
}

/// A live file watch in a sandbox (`Request::Watch`), shared by the file
/// watch WebSocket and webhooks' `watch_dir`: its events until the
/// watch's connection or the sandbox's runtime ends.
pub struct Watch(InitConn);

impl Watch {
    /// Subscribes; returns once init says the watch is live.
    pub async fn start(socket: &Path, path: String, recursive: bool) -> Result<Watch, InitError> {
        let mut conn = InitConn::connect(socket).await?;
        conn.send(&Request::Watch { path, recursive }, &[]).await?;
        match conn.recv().await?.0 {
            Response::Ok => Ok(Watch(conn)),
            Response::Error { code, message } => Err(InitError::Refused { code, message }),
            other => Err(InitError::Unreachable(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unexpected answer to a watch: {other:?}"),
            ))),
        }
    }

    /// The next change, `(event, path)`; `None` once the watch ended.
    /// Cancel-safe.
    pub async fn next(&mut self) -> Option<(String, String)> {
        match self.0.recv().await {
            Ok((Response::Event { event, path }, _)) => Some((event, path)),
            _ => None,
        }
    }
}
