//! Relaying an allowed connection without looking at it: splice(2) moves
//! the bytes socket → pipe → socket inside the kernel, so the proxy copies
//! nothing through user space (with two cores shared by sandbox, proxy and
//! server, copies cost a third of the throughput).

use crate::bandwidth::{Bandwidth, Bucket};
use sandstone_sys::fd::splice;
use std::io::{ErrorKind, Result};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::Interest;
use tokio::net::TcpStream;

const PIPE_SIZE: usize = 1 << 20;

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let (r, w) = sandstone_sys::fd::pipe(libc::O_NONBLOCK | libc::O_CLOEXEC)?;
    // Larger pipes mean fewer trips; the default (64 KiB) still works when
    // the limit for unprivileged pipes refuses this.
    let _ = sandstone_sys::fd::set_pipe_size(w.as_fd(), PIPE_SIZE as libc::c_int);
    Ok((r, w))
}

/// Waits until `s` is ready for `interest` and runs `op` once it does.
async fn when_ready(
    s: &TcpStream,
    interest: Interest,
    mut op: impl FnMut() -> Result<usize>,
) -> Result<usize> {
    loop {
        s.ready(interest).await?;
        match s.try_io(interest, &mut op) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Moves everything `from` sends to `to`, then half-closes `to`, as fast
/// as `bucket` lets it.
async fn pump(from: &TcpStream, to: &TcpStream, total: &AtomicU64, bucket: &Bucket) -> Result<()> {
    let (r, w) = pipe()?;
    loop {
        bucket.ready().await;
        let n = when_ready(from, Interest::READABLE, || {
            splice(from.as_fd(), w.as_fd(), bucket.chunk(PIPE_SIZE))
        })
        .await?;
        bucket.charge(n);
        if n == 0 {
            // A peer already gone has nothing left to tell.
            let _ = sandstone_sys::net::shutdown(to.as_fd(), std::net::Shutdown::Write);
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            left -= when_ready(to, Interest::WRITABLE, || {
                splice(r.as_fd(), to.as_fd(), left)
            })
            .await?;
        }
        total.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Relays both ways until both sides have finished or either fails, at
/// most as fast as `limit` lets each direction; returns the bytes moved
/// (client → upstream, upstream → client).
pub async fn relay(client: &TcpStream, upstream: &TcpStream, limit: &Bandwidth) -> (u64, u64) {
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let _ = tokio::try_join!(
        pump(client, upstream, &up, &limit.up),
        pump(upstream, client, &down, &limit.down)
    );
    (up.into_inner(), down.into_inner())
}
