//! API errors: a stable code, a message naming what was wrong, a fitting
//! status, in Sandbox0's `{success:false, error:{code,message}}` envelope.
//! The one place the core's errors ([`lifecycle::Error`], the database's)
//! become HTTP.

use crate::initclient::InitError;
use crate::lifecycle;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sandstone_api::{Envelope, ErrorBody};
use sandstone_init::proto::ErrorCode;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} {id} not found"),
        )
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// Maps an error answered by a sandbox's init.
    fn from_init(code: ErrorCode, message: String) -> Self {
        use ErrorCode as C;
        let (status, code) = match code {
            C::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            C::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
            C::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_request"),
            C::IsADirectory => (StatusCode::BAD_REQUEST, "is_a_directory"),
            C::NotADirectory => (StatusCode::BAD_REQUEST, "not_a_directory"),
            C::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            C::Busy => (StatusCode::CONFLICT, "busy"),
            C::OutsideRoot => (StatusCode::FORBIDDEN, "outside_root"),
            C::Io if message.contains("No space left") || message.contains("quota") => {
                (StatusCode::INSUFFICIENT_STORAGE, "no_space")
            }
            C::Io => (StatusCode::UNPROCESSABLE_ENTITY, "io_error"),
        };
        Self::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, message = %self.message, "request failed");
        }
        let body = Envelope::<()> {
            success: false,
            data: None,
            error: Some(ErrorBody {
                code: self.code.to_string(),
                message: self.message,
            }),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<sandstone_db::Error> for ApiError {
    fn from(e: sandstone_db::Error) -> Self {
        match e {
            sandstone_db::Error::NotFound => {
                Self::new(StatusCode::NOT_FOUND, "not_found", "not found")
            }
            // Another node took the sandbox while this one worked on it:
            // asking again reaches the new owner.
            e @ sandstone_db::Error::Fenced { .. } => {
                Self::new(StatusCode::CONFLICT, "fenced", e.to_string())
            }
            // "database: <why>": the store is down or cut off, not broken.
            e if e.is_unavailable() => Self::unavailable(e.to_string()),
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<InitError> for ApiError {
    fn from(e: InitError) -> Self {
        match e {
            InitError::Unreachable(_) => Self::unavailable(e.to_string()),
            InitError::Refused { code, message } => Self::from_init(code, message),
        }
    }
}

impl From<lifecycle::Error> for ApiError {
    fn from(e: lifecycle::Error) -> Self {
        use lifecycle::Error as E;
        let message = e.to_string();
        let (status, code) = match e {
            E::Db(db) => return db.into(),
            E::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            E::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            E::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            E::Gone(_) => (StatusCode::GONE, "gone"),
            E::NoSlot => (StatusCode::TOO_MANY_REQUESTS, "capacity"),
            E::NoSpace(_) => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
            E::InitUnreachable(_) | E::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            E::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, code, message)
    }
}

/// `{success: true, data}` with a status.
pub fn ok<T: serde::Serialize>(status: StatusCode, data: T) -> Response {
    let body = Envelope {
        success: true,
        data: Some(data),
        error: None,
    };
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_errors_keep_their_status_code_and_message() {
        use lifecycle::Error as E;
        let cases = [
            (
                E::Invalid("invalid field `x`".into()),
                400,
                "invalid_request",
            ),
            (E::not_found("sandbox", "sb-1"), 404, "not_found"),
            (
                E::Conflict("sandbox sb-1 is paused".into()),
                409,
                "conflict",
            ),
            (E::NoSlot, 429, "capacity"),
            (
                E::NoSpace("storage pool almost full".into()),
                507,
                "no_space",
            ),
            (
                E::InitUnreachable(std::io::ErrorKind::ConnectionRefused.into()),
                503,
                "unavailable",
            ),
            (E::Db(sandstone_db::Error::NotFound), 404, "not_found"),
            (E::Db(sqlx::Error::PoolTimedOut.into()), 503, "unavailable"),
            (
                E::Db(sandstone_db::Error::Fenced {
                    sandbox: "sb-1".into(),
                    node: Some("n2".into()),
                    epoch: 3,
                }),
                409,
                "fenced",
            ),
            (
                E::Db(sandstone_db::Error::Corrupt("x".into())),
                500,
                "internal",
            ),
            (E::internal("mkdir failed"), 500, "internal"),
        ];
        for (e, status, code) in cases {
            let message = e.to_string();
            let api = ApiError::from(e);
            assert_eq!((api.status.as_u16(), api.code), (status, code), "{message}");
            assert_eq!(api.message, message);
        }
        assert_eq!(
            ApiError::from(E::not_found("snapshot", "snap-1")).message,
            "snapshot snap-1 not found"
        );
    }
}
