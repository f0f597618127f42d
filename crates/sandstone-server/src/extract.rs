//! Request extractors whose failures are API errors naming the field.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

/// A JSON body. Malformed JSON, a wrong type or a missing field is a 400
/// whose message names the field; an empty body is read as `{}`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body rejected: {e}"),
            )
        })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de)
            .map(JsonBody)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = decode_problem(e.inner());
                if path == "." || path.is_empty() {
                    ApiError::bad_request(format!("invalid JSON body: {inner}"))
                } else {
                    ApiError::bad_request(format!("invalid field `{path}`: {inner}"))
                }
            })
    }
}

/// A JSON decoding problem as the API reports it. An enum value the daemon
/// does not know is "not supported": Sandbox0's spec may well define it,
/// and the caller should learn that Sandstone does not act on it, not that
/// it is malformed.
pub(crate) fn decode_problem(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg
        .strip_prefix("unknown variant ")
        .and_then(|rest| rest.split_once(", expected "))
    {
        Some((value, expected)) => {
            format!("{value} is not supported by Sandstone (expected {expected})")
        }
        None => msg,
    }
}
