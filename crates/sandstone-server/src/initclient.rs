//! Async client of a sandbox's init socket.

use crate::error::ApiError;
use sandstone_init::proto::{Request, Response, encode, lengths};
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

/// Lost contact with a sandbox's init.
pub fn unreachable(e: std::io::Error) -> ApiError {
    ApiError::unavailable(format!("sandbox init unreachable: {e}"))
}

/// One request, one terminal answer; init errors become API errors.
pub async fn call(
    socket: &Path,
    req: &Request,
    payload: &[u8],
) -> Result<(Response, Vec<u8>), ApiError> {
    let mut c = InitConn::connect(socket).await.map_err(unreachable)?;
    c.send(req, payload).await.map_err(unreachable)?;
    loop {
        let (resp, body) = c.recv().await.map_err(unreachable)?;
        match resp {
            Response::Error { code, message } => return Err(ApiError::from_init(code, message)),
            r if r.is_terminal() => return Ok((r, body)),
            _ => continue,
        }
    }
}
