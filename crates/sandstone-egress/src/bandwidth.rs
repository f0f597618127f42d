//! Per-sandbox bandwidth (`egress.bandwidth`): one token bucket per
//! direction, shared by every connection of the sandbox, spliced or
//! terminated. A transfer may start while the bucket holds tokens and is
//! charged what it moved, so the bucket can go into debt by one transfer
//! (at most [`Bucket::chunk`]) and the next waits it out: the average is
//! the limit, and no transfer is split into tiny ones. The rate is read at
//! each transfer, so a policy change applies to open connections.

use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A policy's limit (a Sandstone extension).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BandwidthLimit {
    /// Each direction's average, in bytes per second.
    pub bytes_per_second: u64,
    /// What may go at once after a quiet spell; a tenth of a second's
    /// worth unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_bytes: Option<u64>,
}

/// The smallest limit: below it a connection's own handshakes time out.
pub const MIN_RATE: u64 = 1 << 10;
/// The smallest transfer and burst.
const MIN_CHUNK: u64 = 16 << 10;

impl BandwidthLimit {
    fn burst(&self) -> u64 {
        self.burst_bytes
            .unwrap_or(self.bytes_per_second / 10)
            .max(MIN_CHUNK)
    }
}

/// One direction's bucket.
#[derive(Debug, Default)]
pub struct Bucket {
    /// Bytes per second; 0 is no limit.
    rate: AtomicU64,
    burst: AtomicU64,
    /// Tokens (negative: debt) and when they were counted.
    state: Mutex<Option<(f64, Instant)>>,
}

impl Bucket {
    fn set(&self, limit: Option<BandwidthLimit>) {
        self.rate
            .store(limit.map_or(0, |l| l.bytes_per_second), Ordering::Relaxed);
        self.burst
            .store(limit.map_or(0, |l| l.burst()), Ordering::Relaxed);
    }

    /// The tokens now, after the refill since they were last counted.
    fn refill(&self, rate: u64) -> std::sync::MutexGuard<'_, Option<(f64, Instant)>> {
        let burst = self.burst.load(Ordering::Relaxed) as f64;
        let mut state = self.state.lock().expect("lock poisoned");
        let now = Instant::now();
        let (tokens, at) = state.unwrap_or((burst, now));
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * rate as f64).min(burst);
        *state = Some((tokens, now));
        state
    }

    /// How long the next transfer must wait; zero when it may start.
    pub fn delay(&self) -> Duration {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return Duration::ZERO;
        }
        let (tokens, _) = self.refill(rate).expect("counted by refill");
        if tokens > 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - tokens) / rate as f64)
        }
    }

    /// Counts `n` bytes moved.
    pub fn charge(&self, n: usize) {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 || n == 0 {
            return;
        }
        if let Some((tokens, _)) = self.refill(rate).as_mut() {
            *tokens -= n as f64;
        }
    }

    /// The most one transfer should move (of `max`): the burst, so a
    /// limited connection moves in steps of about a tenth of a second.
    pub fn chunk(&self, max: usize) -> usize {
        match self.burst.load(Ordering::Relaxed) {
            0 => max,
            burst => max.min(burst as usize),
        }
    }

    /// Waits until a transfer may start.
    pub async fn ready(&self) {
        loop {
            let wait = self.delay();
            if wait.is_zero() {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// A sandbox's buckets: what it sends, and what it receives.
#[derive(Debug, Default)]
pub struct Bandwidth {
    pub up: Bucket,
    pub down: Bucket,
}

impl Bandwidth {
    /// Applies `limit` (none: unlimited) from the next transfer on.
    pub fn set(&self, limit: Option<BandwidthLimit>) {
        self.up.set(limit);
        self.down.set(limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_keeps_the_average_and_lets_a_burst_through() {
        let b = Bucket::default();
        assert!(b.delay().is_zero(), "unlimited");
        b.set(Some(BandwidthLimit {
            bytes_per_second: 1 << 20,
            burst_bytes: None,
        }));
        assert_eq!(b.chunk(1 << 20), 104_857);
        // The burst goes at once; then a transfer waits out its debt.
        assert!(b.delay().is_zero());
        b.charge(104_857 + (1 << 20));
        let wait = b.delay();
        assert!(
            wait > Duration::from_millis(950) && wait <= Duration::from_millis(1001),
            "{wait:?}"
        );
        // Lifted: the next transfer goes now.
        b.set(None);
        assert!(b.delay().is_zero());
        assert_eq!(b.chunk(1 << 20), 1 << 20);
    }
}
