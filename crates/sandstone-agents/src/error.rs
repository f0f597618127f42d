//! Anthropic's error shape: `{"type":"error","error":{"type","message",
//! "details"?},"request_id"}`, with the id also in a `request-id` header.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// `x-should-retry: false` for conflicts a retry cannot fix.
    pub no_retry: bool,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            details: None,
            no_retry: false,
        }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::FORBIDDEN, "permission_error", message)
    }

    pub fn not_found(what: &str, id: &str) -> ApiError {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("{what} {id} not found"),
        )
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::CONFLICT, "conflict_error", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "api_error", message)
    }

    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, message = %self.message, "managed agents error");
        }
        let request_id = crate::ids::new_id("req");
        let mut error = json!({"type": self.kind, "message": self.message});
        if let Some(d) = self.details {
            error["details"] = d;
        }
        let body = json!({"type": "error", "error": error, "request_id": request_id});
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            r.headers_mut().insert("request-id", v);
        }
        if self.no_retry {
            r.headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
        r
    }
}
