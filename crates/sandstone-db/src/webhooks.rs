//! Per-sandbox webhooks: each sandbox's signing secret (sealed by
//! [`crate::secrets::Sealer`], apart from its configuration, which is shown
//! to callers) and the delivery of every event, kept until it is delivered
//! or given up, so a restart resumes what was pending. A delivery carries
//! its signed body and signature: it needs neither the secret nor the
//! sandbox any more (a `sandbox.deleted` outlives its sandbox).

use crate::{Error, Result};
use futures_util::future::BoxFuture;

/// Where one delivery stands. Stored as [`DeliveryState::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Waiting for its next attempt (the first, or a retry).
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up: a refusal that a retry would not change (a 4xx but 408
    /// and 429, a redirect), or retries past the daemon's limit.
    Failed,
    /// Never attempted: the daemon's queue was full when it happened.
    Dropped,
}

impl DeliveryState {
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Dropped => "dropped",
        }
    }
}

impl std::str::FromStr for DeliveryState {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => DeliveryState::Pending,
            "delivered" => DeliveryState::Delivered,
            "failed" => DeliveryState::Failed,
            "dropped" => DeliveryState::Dropped,
            other => return Err(Error::Corrupt(format!("unknown delivery state {other:?}"))),
        })
    }
}

/// One event for one receiver. Times in Unix ms.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    /// The event's id (`event_id` in the body): unique, what receivers
    /// deduplicate retries by.
    pub event_id: String,
    pub sandbox_id: String,
    pub team_id: String,
    /// The node that sends it (the one its sandbox ran on).
    pub node_id: String,
    pub event_type: String,
    pub url: String,
    /// The JSON body exactly as signed.
    pub body: String,
    /// Hex HMAC-SHA256 of `body`; `None` when the webhook has no secret.
    pub signature: Option<String>,
    pub state: DeliveryState,
    pub attempts: i64,
    /// The receiver's HTTP status at the last attempt, if it answered.
    pub last_status: Option<i64>,
    /// Why the last attempt failed (no answer, or a status), if it did.
    pub last_error: Option<String>,
    pub created_at: i64,
    pub next_attempt_at: i64,
    pub delivered_at: Option<i64>,
}

/// What an attempt changed.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptOutcome {
    pub state: DeliveryState,
    pub attempts: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub next_attempt_at: i64,
    pub delivered_at: Option<i64>,
}

pub trait WebhookStore: Send + Sync {
    /// Records sandbox `sandbox`'s sealed secret (replacing one).
    fn put_webhook_secret<'a>(
        &'a self,
        sandbox: &'a str,
        sealed: &'a [u8],
    ) -> BoxFuture<'a, Result<()>>;
    fn webhook_secret<'a>(&'a self, sandbox: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;
    fn delete_webhook_secret<'a>(&'a self, sandbox: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Records a new delivery (an id already there is left as it is).
    fn insert_delivery<'a>(&'a self, d: &'a DeliveryRow) -> BoxFuture<'a, Result<()>>;
    /// `node`'s pending deliveries due at `now`, soonest first, at most
    /// `limit`.
    fn due_deliveries<'a>(
        &'a self,
        node: &'a str,
        now: i64,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<DeliveryRow>>>;
    /// When `node`'s next pending delivery is due, if it has one.
    fn next_delivery_at<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Option<i64>>>;
    fn record_attempt<'a>(
        &'a self,
        event_id: &'a str,
        outcome: &'a AttemptOutcome,
    ) -> BoxFuture<'a, Result<()>>;
    /// A sandbox's deliveries, newest first, at most `limit`.
    fn list_deliveries<'a>(
        &'a self,
        sandbox: &'a str,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<DeliveryRow>>>;
    /// Drops finished deliveries (anything but pending) made before
    /// `before_ms`; returns how many.
    fn prune_deliveries(&self, before_ms: i64) -> BoxFuture<'_, Result<u64>>;
}

#[cfg(test)]
mod tests {
    use super::DeliveryState;

    #[test]
    fn states_round_trip_and_unknown_ones_are_corrupt() {
        for s in [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Failed,
            DeliveryState::Dropped,
        ] {
            assert_eq!(s.as_str().parse::<DeliveryState>().unwrap(), s);
        }
        assert!("sent".parse::<DeliveryState>().is_err());
    }
}
