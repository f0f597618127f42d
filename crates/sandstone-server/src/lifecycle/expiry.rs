//! `ttl` (idle seconds → pause; paused time does not count) and `hard_ttl`
//! (seconds since creation → delete), checked once a second.

use super::{Lifecycle, config_of};
use sandstone_api::timefmt::now_ms;
use sandstone_db::SandboxStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Lifecycle {
    /// Restarts a sandbox's idle clock (`POST .../refresh`): it may now
    /// stay idle `duration` seconds (default: its `ttl`). The clock is set
    /// that far from its end, into the future when `duration` is longer;
    /// any later activity restarts it at the full `ttl`.
    pub fn refresh(&self, id: &str, ttl: Option<u64>, duration: Option<u64>) {
        let (Some(ttl), Some(duration)) = (ttl.filter(|t| *t > 0), duration) else {
            return self.touch(id);
        };
        let ttl = Duration::from_secs(ttl.min(crate::limits::MAX_TTL));
        let duration = Duration::from_secs(duration.min(crate::limits::MAX_TTL));
        let now = Instant::now();
        let at = match duration.checked_sub(ttl) {
            Some(ahead) => now + ahead,
            None => now.checked_sub(ttl - duration).unwrap_or(now),
        };
        self.activity
            .lock()
            .expect("lock poisoned: a holder panicked")
            .insert(id.to_string(), at);
    }

    /// Unix ms when a running sandbox pauses for idleness, if it has a ttl.
    pub fn expires_at_ms(&self, id: &str, ttl: Option<u64>) -> Option<i64> {
        let ttl = ttl.filter(|t| *t > 0)?;
        let last = *self
            .activity
            .lock()
            .expect("lock poisoned: a holder panicked")
            .get(id)?;
        // A refresh may have set the clock ahead: negative idleness.
        let now = Instant::now();
        let idle = match now.checked_duration_since(last) {
            Some(d) => d.as_millis() as i64,
            None => -((last - now).as_millis() as i64),
        };
        Some(now_ms() - idle + (ttl.min(crate::limits::MAX_TTL) as i64) * 1000)
    }

    /// One pass: pause idle sandboxes, delete those past their hard ttl.
    pub async fn expire(&self) {
        // Without its lease the node may no longer own these sandboxes.
        if !self.lease.holds() {
            return;
        }
        let Ok(rows) = self.store.node_sandboxes(&self.node).await else {
            return;
        };
        let now = now_ms();
        for row in rows {
            let config = config_of(&row);
            if let Some(hard) = config.hard_ttl.filter(|t| *t > 0)
                && now
                    >= row
                        .created_at
                        .saturating_add((hard.min(crate::limits::MAX_TTL) as i64) * 1000)
            {
                match self.delete(&row.id).await {
                    Ok(()) => tracing::info!(sandbox = %row.id, "deleted: hard_ttl reached"),
                    Err(e) => {
                        tracing::warn!(sandbox = %row.id, error = %e, "hard_ttl delete failed")
                    }
                }
                continue;
            }
            let Some(ttl) = config.ttl.filter(|t| *t > 0) else {
                continue;
            };
            let idle = self
                .activity
                .lock()
                .expect("lock poisoned: a holder panicked")
                .get(&row.id)
                .map(Instant::elapsed);
            if row.status == SandboxStatus::Running
                && idle.is_some_and(|i| i >= Duration::from_secs(ttl))
            {
                match self.pause(&row.id).await {
                    Ok(_) => tracing::info!(sandbox = %row.id, "paused: idle for its ttl"),
                    Err(e) => {
                        tracing::warn!(sandbox = %row.id, error = %e, "ttl pause failed")
                    }
                }
            }
        }
    }

    /// Runs [`Lifecycle::expire`] every second, and drops audit records
    /// older than `audit_retention` every minute, until the daemon stops.
    pub fn spawn_expiry(self: &Arc<Self>, audit_retention: Duration) {
        let lc = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            for n in 0u64.. {
                tick.tick().await;
                lc.expire().await;
                if n % 60 == 0 {
                    let before = now_ms() - audit_retention.as_millis() as i64;
                    match lc.store.prune_audit(before).await {
                        Ok(0) => {}
                        Ok(k) => tracing::info!(records = k, "pruned audit records past retention"),
                        Err(e) => tracing::warn!(error = %e, "audit pruning failed"),
                    }
                }
            }
        });
    }
}
