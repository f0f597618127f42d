//! Async client of a sandbox's init socket.

use sandstone_init::proto::{ErrorCode, Request, Response, encode, lengths};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Connections kept per init between requests. Each one is a thread
/// parked in init; two cover a caller and a concurrent one.
const KEPT: usize = 2;

/// A sandbox's init socket, with connections to it kept open between
/// requests: a new one costs a connect here and a thread in init, a
/// sixth of a short exec. Clones share them; they close with the last
/// clone (the runtime's), and a kept one that init closed meanwhile (it
/// died, or a checkpoint ended its connections) is never used again.
///
/// They are kept registered with the runtime's reactor: one registered
/// anew knows no readiness yet, so its first write waited for the reactor
/// to report it writable, and the request often went on on another
/// worker thread, one hand-off more per exec.
#[derive(Clone, Debug)]
pub struct InitSocket {
    path: PathBuf,
    kept: Arc<Mutex<Vec<UnixStream>>>,
}

impl InitSocket {
    pub fn new(path: PathBuf) -> InitSocket {
        InitSocket {
            path,
            kept: Arc::default(),
        }
    }

    /// The socket's path: for a connection that is never kept (a watch, a
    /// probe that must not reuse one).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A kept connection that is still open and quiet, else a new one.
    pub async fn connect(&self) -> std::io::Result<InitConn> {
        let kept = {
            let mut kept = crate::lock(&self.kept);
            std::iter::from_fn(|| kept.pop()).find(|s| sandstone_sys::net::is_quiet(s.as_fd()))
        };
        let stream = match kept {
            Some(s) => s,
            None => UnixStream::connect(&self.path).await?,
        };
        Ok(InitConn {
            stream,
            buf: Vec::new(),
        })
    }

    /// One request, one terminal answer, on a kept connection when there is
    /// one; the connection is kept again after a whole answer.
    pub async fn call(
        &self,
        req: &Request,
        payload: &[u8],
    ) -> Result<(Response, Vec<u8>), InitError> {
        let mut c = self.connect().await?;
        let answer = exchange(&mut c, req, payload).await;
        // A connection that asked for a checkpoint is ended by init.
        let whole = answer.is_ok() || matches!(answer, Err(InitError::Refused { .. }));
        if whole && !matches!(req, Request::Quiesce) {
            self.keep(c);
        }
        answer
    }

    /// Keeps `conn` for a later request: its last answer was read whole.
    pub fn keep(&self, conn: InitConn) {
        if !conn.buf.is_empty() {
            return;
        }
        let mut kept = crate::lock(&self.kept);
        if kept.len() < KEPT {
            kept.push(conn.stream);
        }
    }
}

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
    exchange(&mut InitConn::connect(socket).await?, req, payload).await
}

/// Sends `req` and reads up to its terminal answer.
async fn exchange(
    c: &mut InitConn,
    req: &Request,
    payload: &[u8],
) -> Result<(Response, Vec<u8>), InitError> {
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
