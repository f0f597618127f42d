//! The API's error body: `{"type": "error", "error": {"type", "message",
//! "details"?}, "request_id"}`.

use crate::common::{Extra, tag};
use serde::{Deserialize, Serialize};
use serde_json::Value;

tag!(
    /// `"type": "error"`.
    ErrorTag = "error"
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(rename = "type")]
    pub tag: ErrorTag,
    pub error: ErrorObject,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorObject {
    /// `invalid_request_error`, `not_found_error`, `conflict_error`, …
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    /// Machine-readable context (`error_code`, a lease's current state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl ErrorBody {
    pub fn new(kind: &str, message: String, details: Option<Value>, request_id: String) -> Self {
        ErrorBody {
            tag: ErrorTag,
            error: ErrorObject {
                kind: kind.to_string(),
                message,
                details,
                extra: Extra::new(),
            },
            request_id: Some(request_id),
            extra: Extra::new(),
        }
    }
}
