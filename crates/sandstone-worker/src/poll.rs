//! The poll loop (`sandstone worker poll`): long-poll, ack, hand each item
//! to its own task, up to the concurrency limit. Errors follow the SDK
//! poller: a fatal 4xx ends the loop, anything else backs off and retries.

use crate::Worker;
use crate::cma::{CmaError, Polled};
use crate::item::Item;
use crate::runner::jitter;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The API caps `block_ms` at 999; client-side jitter spaces empty polls.
const POLL_BLOCK_MS: u64 = 999;

/// Why polling stopped before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("polling needs the environment key")]
    NoEnvironmentKey,
    #[error("poll refused: {0}")]
    Refused(#[source] CmaError),
}

/// Polls until shutdown or a fatal error, then waits for in-flight items
/// (each finishes its teardown and stop).
pub async fn poll_loop(worker: Arc<Worker>) -> Result<(), PollError> {
    let permits = Arc::new(Semaphore::new(worker.config.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let result = poll_until_done(&worker, &permits, &mut tasks).await;
    while tasks.join_next().await.is_some() {}
    result
}

async fn poll_until_done(
    worker: &Arc<Worker>,
    permits: &Arc<Semaphore>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<(), PollError> {
    let cfg = &worker.config;
    let Some(key) = cfg.environment_key.clone() else {
        return Err(PollError::NoEnvironmentKey);
    };
    let mut shutdown = worker.shutdown.clone();
    let mut failures: u32 = 0;
    loop {
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = crate::shutting_down(&mut shutdown) => return Ok(()),
        };
        let polled = tokio::select! {
            r = worker.cma.poll(&cfg.environment_id, &key, &cfg.worker_id, POLL_BLOCK_MS) => r,
            _ = crate::shutting_down(&mut shutdown) => return Ok(()),
        };
        let wait = match polled {
            Ok(Polled { item: Some(v), .. }) => {
                failures = 0;
                let Some(item) = Item::from_poll(&v) else {
                    tracing::warn!("poll returned an item without a usable id; skipping it");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                match worker.cma.ack(&cfg.environment_id, &item.id, &key).await {
                    Ok(_) => {
                        let w = worker.clone();
                        tasks.spawn(async move {
                            match &w.config.on_work {
                                Some(program) => w.hand_off(item, v, program).await,
                                None => drop(w.handle(item).await),
                            }
                            drop(permit);
                        });
                        continue;
                    }
                    Err(e) if e.is_fatal() => {
                        tracing::warn!(work = %item.id, error = %e, "ack refused; discarding the item");
                        let _ = worker
                            .cma
                            .stop(&cfg.environment_id, &item.id, &key, true)
                            .await;
                        continue;
                    }
                    Err(e) => {
                        // Unacked, it becomes reclaimable by any poller.
                        tracing::warn!(work = %item.id, error = %e, "ack failed; backing off");
                        failures += 1;
                        backoff(failures)
                    }
                }
            }
            // Sandstone's control plane waited for work already: again at
            // once, so a message reaches a tool without a sleep between.
            Ok(Polled {
                item: None,
                server_waits: true,
            }) => {
                failures = 0;
                Duration::ZERO
            }
            // U[1 s, 3 s), as the SDK poller sleeps after an empty poll
            // (Anthropic's API asks for that spacing).
            Ok(Polled {
                item: None,
                server_waits: false,
            }) => {
                failures = 0;
                Duration::from_secs(1) + jitter(Duration::from_secs(4)) - Duration::from_secs(2)
            }
            Err(e) if e.is_fatal() => {
                tracing::error!(error = %e, "poll refused; stopping");
                return Err(PollError::Refused(e));
            }
            Err(e) => {
                worker.metrics.poll_failed();
                failures += 1;
                tracing::warn!(error = %e, attempt = failures, "poll failed; backing off");
                backoff(failures)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = crate::shutting_down(&mut shutdown) => return Ok(()),
        }
    }
}

/// `min(60, 2^attempt)` seconds plus up to one second of jitter.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_secs(2u64.saturating_pow(attempt).min(60));
    base + jitter(Duration::from_secs(2)) - Duration::from_secs(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute_with_under_a_second_of_jitter() {
        for (attempt, secs) in [(1, 2), (3, 8), (6, 60), (30, 60)] {
            let b = backoff(attempt);
            assert!(b >= Duration::from_secs(secs) && b < Duration::from_secs(secs + 1));
        }
    }
}
