//! What goes wrong in the control plane, one variant per kind of failure
//! the API distinguishes. `http.rs` maps each to a status and Anthropic's
//! error body; nothing else here knows about HTTP.

use sandstone_agents_api::WorkLeaseState;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request that breaks a rule; the message names the field.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{what} {id} not found")]
    NotFound { what: String, id: String },
    #[error("environment {0} not found")]
    EnvironmentNotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A conflict a retry cannot fix.
    #[error("work {0} is already stopped")]
    AlreadyStopped(String),
    /// A heartbeat whose `expected_last_heartbeat` is not the stored one.
    #[error(
        "expected_last_heartbeat does not match the stored heartbeat of work {work}: another worker may hold the lease"
    )]
    HeartbeatPrecondition {
        work: String,
        current: Box<WorkLeaseState>,
    },
    #[error("{0}")]
    MemoryPathConflict(String),
    #[error("{0}")]
    MemoryPreconditionFailed(String),
    #[error("{0}")]
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::Invalid(message.into())
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::Unauthorized(message.into())
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::Forbidden(message.into())
    }

    pub fn not_found(what: &str, id: &str) -> ApiError {
        ApiError::NotFound {
            what: what.to_string(),
            id: id.to_string(),
        }
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::Conflict(message.into())
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::Internal(message.into())
    }
}
