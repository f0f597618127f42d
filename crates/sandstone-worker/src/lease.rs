//! The work item's lease: heartbeats from before anything slow happens
//! until the item ends, so a slow download never lets another worker take
//! the session while this one still serves it.

use crate::cma::Cma;
use crate::metrics::Metrics;
use crate::secret::Secret;
use sandstone_agents_api::NO_HEARTBEAT;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// TTL assumed before the first answer (as the Python and TS workers do).
const ASSUMED_TTL: u64 = 90;

/// Why the lease ended the item's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEnd {
    /// The server asked the item to stop (`stopping` / `stopped`).
    StopRequested,
    /// The server would not extend the lease.
    NotExtended,
    /// 412: someone else holds the lease now.
    Lost,
    /// No heartbeat succeeded for a whole TTL.
    AssumedLost,
    /// A fatal 4xx answered the heartbeat.
    Rejected,
}

impl LeaseEnd {
    /// Whether the worker still owns the item and should force-stop it.
    pub fn owns_item(self) -> bool {
        !matches!(self, LeaseEnd::Lost | LeaseEnd::AssumedLost)
    }
}

/// A running heartbeat loop.
pub struct Lease {
    ttl: Arc<AtomicU64>,
    end: watch::Receiver<Option<LeaseEnd>>,
    task: tokio::task::JoinHandle<()>,
}

pub struct Target {
    pub cma: Cma,
    pub env: String,
    pub work: String,
    pub token: Secret,
    pub metrics: Arc<Metrics>,
}

impl Lease {
    pub fn start(t: Target) -> Lease {
        let ttl = Arc::new(AtomicU64::new(ASSUMED_TTL));
        let (tx, end) = watch::channel(None);
        let task = tokio::spawn(beat(t, ttl.clone(), tx));
        Lease { ttl, end, task }
    }

    /// The TTL the server last granted: also how long result posting may
    /// keep retrying.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl.load(Ordering::Relaxed))
    }

    pub fn ended(&self) -> Option<LeaseEnd> {
        *self.end.borrow()
    }

    /// Resolves when the lease ends the run.
    pub async fn wait_end(&self) -> LeaseEnd {
        let mut rx = self.end.clone();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The loop only exits after sending an end.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The heartbeat ends with the item, however the item ends (a panic
/// included): the server then reclaims it when the lease runs out.
impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `max(1 s, min(ttl/2, 30 s))`.
fn interval(ttl: u64) -> Duration {
    Duration::from_secs((ttl / 2).clamp(1, 30))
}

async fn beat(t: Target, ttl: Arc<AtomicU64>, tx: watch::Sender<Option<LeaseEnd>>) {
    let mut expected = NO_HEARTBEAT.to_string();
    let mut last_ok = Instant::now();
    loop {
        let every = interval(ttl.load(Ordering::Relaxed));
        match t
            .cma
            .heartbeat(&t.env, &t.work, &t.token, &expected, every)
            .await
        {
            Ok(beat) => {
                last_ok = Instant::now();
                if beat.ttl_seconds > 0 {
                    ttl.store(beat.ttl_seconds, Ordering::Relaxed);
                }
                expected = beat.last_heartbeat;
                if beat.state.stop_requested() {
                    let _ = tx.send(Some(LeaseEnd::StopRequested));
                    return;
                }
                if !beat.lease_extended {
                    let _ = tx.send(Some(LeaseEnd::NotExtended));
                    return;
                }
                tokio::time::sleep(interval(ttl.load(Ordering::Relaxed))).await;
            }
            Err(e) if e.status() == Some(412) => {
                tracing::warn!(work = %t.work, "heartbeat precondition failed: the lease belongs to another worker");
                t.metrics.heartbeat_failed();
                let _ = tx.send(Some(LeaseEnd::Lost));
                return;
            }
            Err(e) if e.is_fatal() => {
                tracing::warn!(work = %t.work, error = %e, "heartbeat rejected");
                t.metrics.heartbeat_failed();
                let _ = tx.send(Some(LeaseEnd::Rejected));
                return;
            }
            Err(e) => {
                t.metrics.heartbeat_failed();
                let ttl_now = Duration::from_secs(ttl.load(Ordering::Relaxed));
                if last_ok.elapsed() >= ttl_now {
                    tracing::warn!(work = %t.work, error = %e, "no heartbeat succeeded for a whole TTL: lease assumed lost");
                    let _ = tx.send(Some(LeaseEnd::AssumedLost));
                    return;
                }
                tracing::debug!(work = %t.work, error = %e, "heartbeat failed; retrying");
                tokio::time::sleep(every.min(Duration::from_secs(2))).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_half_the_ttl_within_one_and_thirty_seconds() {
        assert_eq!(interval(90), Duration::from_secs(30));
        assert_eq!(interval(10), Duration::from_secs(5));
        assert_eq!(interval(1), Duration::from_secs(1));
    }

    #[test]
    fn only_a_lost_lease_leaves_the_item_alone() {
        assert!(!LeaseEnd::Lost.owns_item());
        assert!(!LeaseEnd::AssumedLost.owns_item());
        assert!(LeaseEnd::StopRequested.owns_item());
        assert!(LeaseEnd::NotExtended.owns_item());
    }
}
