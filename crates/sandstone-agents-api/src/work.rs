//! The `self_hosted` work queue: items (one live per session), their
//! states and the transitions the protocol allows, heartbeats and the
//! queue's statistics.

use crate::common::{Extra, Metadata, MetadataPatch, closed_enum, nullable, open_enum, tag};
use serde::{Deserialize, Serialize};

tag!(
    /// `"type": "work"`.
    WorkTag = "work"
);
tag!(
    /// `"type": "work_heartbeat"`.
    WorkHeartbeatTag = "work_heartbeat"
);
tag!(
    /// `"type": "work_queue_stats"`.
    WorkQueueStatsTag = "work_queue_stats"
);

/// What `expected_last_heartbeat` is before the first heartbeat.
pub const NO_HEARTBEAT: &str = "NO_HEARTBEAT";

/// A Sandstone extension on poll answers (`true`): the server held the
/// poll open until work arrived or `block_ms` passed, so after an empty
/// answer a worker polls again at once. Anthropic's API does not send it,
/// and against it a worker sleeps between empty polls as the SDK does.
pub const LONG_POLL_HEADER: &str = "sandstone-long-poll";

closed_enum!(
    /// A work item's state: `queued` (claimable), `starting` (acked, no
    /// heartbeat yet), `active` (heartbeating), `stopping` (a graceful
    /// stop the worker learns on its next heartbeat), `stopped` (final).
    WorkState {
        Queued = "queued",
        Starting = "starting",
        Active = "active",
        Stopping = "stopping",
        Stopped = "stopped",
    }
);

impl WorkState {
    /// Anything but `stopped`: a session has at most one live item.
    pub fn is_live(self) -> bool {
        self != WorkState::Stopped
    }

    /// A poll may claim it.
    pub fn is_claimable(self) -> bool {
        self == WorkState::Queued
    }

    /// An ack is accepted (a repeated ack changes nothing).
    pub fn can_ack(self) -> bool {
        matches!(
            self,
            WorkState::Queued | WorkState::Starting | WorkState::Active
        )
    }

    /// The state after an accepted ack: a queued item starts.
    pub fn ack(self) -> Option<WorkState> {
        match self {
            WorkState::Queued => Some(WorkState::Starting),
            WorkState::Starting | WorkState::Active => Some(self),
            WorkState::Stopping | WorkState::Stopped => None,
        }
    }

    /// A heartbeat answered "stop": the worker must let the item go; its
    /// expectation is not compared.
    pub fn stop_requested(self) -> bool {
        matches!(self, WorkState::Stopping | WorkState::Stopped)
    }

    /// A heartbeat may extend the lease (it has been acked and not asked
    /// to stop); a successful one makes the item `active`.
    pub fn can_heartbeat(self) -> bool {
        matches!(self, WorkState::Starting | WorkState::Active)
    }

    /// A worker holds a lease on it, which can run out.
    pub fn holds_lease(self) -> bool {
        matches!(
            self,
            WorkState::Starting | WorkState::Active | WorkState::Stopping
        )
    }

    /// A stop: forced, or of an item no worker started, is final at once;
    /// otherwise it is `stopping` until the worker lets go. `None` when
    /// the item is already stopped.
    pub fn stop(self, force: bool) -> Option<WorkState> {
        match self {
            WorkState::Stopped => None,
            WorkState::Queued => Some(WorkState::Stopped),
            _ if force => Some(WorkState::Stopped),
            _ => Some(WorkState::Stopping),
        }
    }

    /// A lease that ran out stops the item; its session is queued again
    /// unless the item was already being stopped.
    pub fn requeue_on_expiry(self) -> bool {
        self != WorkState::Stopping
    }
}

/// A work item as polled, listed and fetched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkItem {
    #[serde(rename = "type")]
    pub tag: WorkTag,
    pub id: String,
    pub environment_id: String,
    pub data: WorkData,
    pub state: WorkState,
    pub metadata: Metadata,
    /// Base64url JSON carrying a sessions token: only in a poll's answer.
    pub secret: Option<String>,
    pub created_at: String,
    pub acknowledged_at: Option<String>,
    pub started_at: Option<String>,
    pub latest_heartbeat_at: Option<String>,
    pub stop_requested_at: Option<String>,
    pub stopped_at: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

open_enum!(
    /// What an item asks the worker to do.
    WorkKind {
        /// Serve the session `data.id`.
        Session = "session",
        /// Probe what serving needs; no session.
        Healthcheck = "healthcheck",
    }
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkData {
    #[serde(rename = "type")]
    pub kind: WorkKind,
    #[serde(default)]
    pub id: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A heartbeat's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkHeartbeat {
    #[serde(rename = "type")]
    pub tag: WorkHeartbeatTag,
    /// Echoed verbatim as the next `expected_last_heartbeat`.
    pub last_heartbeat: String,
    pub lease_extended: bool,
    pub state: WorkState,
    pub ttl_seconds: u64,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The lease as it is, in a 412's `details.current_state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkLeaseState {
    pub state: WorkState,
    pub ttl_seconds: u64,
    pub last_heartbeat: Option<String>,
    pub lease_extended: bool,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkQueueStats {
    #[serde(rename = "type")]
    pub tag: WorkQueueStatsTag,
    /// Queued and not claimed.
    pub depth: u64,
    /// Claimed, not yet acked.
    pub pending: u64,
    pub oldest_queued_at: Option<String>,
    pub workers_polling: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `POST …/work/{id}/stop`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkStop {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `POST …/work/{id}`: metadata only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub metadata: Option<Option<MetadataPatch>>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// What a work item's `secret` decodes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkSecret {
    pub sessions_token: String,
    #[serde(flatten)]
    pub extra: Extra,
}
