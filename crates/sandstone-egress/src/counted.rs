//! The sandbox's side of a connection the proxy speaks on (terminated TLS,
//! a database login): the bytes the sniffer already read come first, the
//! bytes are counted both ways, and the sandbox's bandwidth holds both
//! ways back.

use crate::bandwidth::Bucket;
use crate::state::SandboxNet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The sandbox's side of the connection: replays the bytes the proxy read
/// while sniffing, then reads on; counts bytes both ways; the sandbox's
/// bandwidth holds both ways back.
pub(crate) struct Counted {
    inner: TcpStream,
    head: Vec<u8>,
    at: usize,
    pub(crate) up: Arc<AtomicU64>,
    pub(crate) down: Arc<AtomicU64>,
    sandbox: Arc<SandboxNet>,
    /// A read, and a write, waiting for the sandbox's bandwidth.
    read_wait: Option<Pin<Box<tokio::time::Sleep>>>,
    write_wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Counted {
    pub(crate) fn new(inner: TcpStream, head: Vec<u8>, sandbox: Arc<SandboxNet>) -> Counted {
        // What the proxy writes is sent at once: a reply in several small
        // writes (a login's last messages, say) would otherwise wait on
        // Nagle for the sandbox's delayed ACK, 40 ms.
        let _ = inner.set_nodelay(true);
        Counted {
            inner,
            head,
            at: 0,
            up: Arc::default(),
            down: Arc::default(),
            sandbox,
            read_wait: None,
            write_wait: None,
        }
    }
}

/// Ready once `bucket` lets a transfer start; else registers the wake-up.
fn throttle(
    bucket: &Bucket,
    wait: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    loop {
        if let Some(sleep) = wait {
            std::task::ready!(sleep.as_mut().poll(cx));
            *wait = None;
        }
        let delay = bucket.delay();
        if delay.is_zero() {
            return Poll::Ready(());
        }
        *wait = Some(Box::pin(tokio::time::sleep(delay)));
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.head.len() {
            let n = (this.head.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.head[this.at..this.at + n]);
            this.at += n;
            this.up.fetch_add(n as u64, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        std::task::ready!(throttle(
            &this.sandbox.bandwidth.up,
            &mut this.read_wait,
            cx
        ));
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        this.sandbox.bandwidth.up.charge(n);
        this.up.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl Counted {
    fn wrote(&self, r: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = r {
            self.sandbox.bandwidth.down.charge(*n);
            self.down.fetch_add(*n as u64, Ordering::Relaxed);
        }
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(throttle(
            &this.sandbox.bandwidth.down,
            &mut this.write_wait,
            cx
        ));
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        this.wrote(&r);
        r
    }

    /// rustls hands over every TLS record it has ready at once: one
    /// `writev` for them, not one `send` per 16 KiB record.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(throttle(
            &this.sandbox.bandwidth.down,
            &mut this.write_wait,
            cx
        ));
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
