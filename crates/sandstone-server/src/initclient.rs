//! Async client of a sandbox's init socket.

use sandstone_init::proto::{ErrorCode, Request, Response, encode, lengths};
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

pub struct InitConn {
    stream: UnixStream,
}

impl InitConn {
    pub async fn connect(socket: &Path) -> std::io::Result<InitConn> {
        Ok(InitConn {
            stream: UnixStream::connect(socket).await?,
        })
    }

    pub async fn send(&mut self, req: &Request, payload: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(&encode(req, payload)).await
    }

    /// The next frame of the answer.
    pub async fn recv(&mut self) -> std::io::Result<(Response, Vec<u8>)> {
        let mut prefix = [0u8; 8];
        self.stream.read_exact(&mut prefix).await?;
        let (hl, pl) = lengths(prefix)?;
        let mut buf = vec![0u8; hl + pl];
        self.stream.read_exact(&mut buf).await?;
        let payload = buf.split_off(hl);
        let header = serde_json::from_slice(&buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok((header, payload))
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
