//! Request fields shared by every resource, checked the way the API checks
//! them (a 400 naming the field), and list pages.

use crate::error::{ApiError, ApiResult};
use sandstone_agents_api::{Metadata, MetadataPatch};
use serde_json::{Value, json};

const MAX_METADATA: usize = 16;

/// `{"data", "next_page"}` of `items` from the cursor `page`.
pub fn paginate<T: serde::Serialize>(
    items: Vec<T>,
    limit: Option<usize>,
    page: Option<&str>,
    max: usize,
) -> ApiResult<Value> {
    let limit = limit.unwrap_or(20.min(max));
    if limit == 0 || limit > max {
        return Err(ApiError::invalid(format!("limit: between 1 and {max}")));
    }
    let start = match page {
        None | Some("") => 0,
        Some(p) => p
            .strip_prefix("page_")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                ApiError::invalid(format!("page: {p:?} is not a cursor from this server"))
            })?,
    };
    let end = start.saturating_add(limit).min(items.len());
    let data: Vec<T> = items.into_iter().skip(start).take(limit).collect();
    let next = (end > start && data.len() == limit).then(|| format!("page_{end}"));
    let prev = (start > 0).then(|| format!("page_{}", start.saturating_sub(limit)));
    Ok(json!({"data": data, "next_page": next, "prev_page": prev}))
}

/// An optional string field of at most `max` characters.
pub(crate) fn optional(v: Option<String>, name: &str, max: usize) -> ApiResult<Option<String>> {
    match v {
        Some(s) if s.chars().count() > max => Err(ApiError::invalid(format!(
            "{name}: a string of at most {max} characters"
        ))),
        v => Ok(v),
    }
}

/// A required string field of 1 to `max` characters.
pub(crate) fn required(v: Option<String>, name: &str, max: usize) -> ApiResult<String> {
    match v {
        Some(s) if !s.is_empty() && s.chars().count() <= max => Ok(s),
        _ => Err(ApiError::invalid(format!(
            "{name}: required, a string of 1 to {max} characters"
        ))),
    }
}

/// [`optional`] of field `name` of an untyped body (a string or null).
pub(crate) fn opt_string(body: &Value, name: &str, max: usize) -> ApiResult<Value> {
    match &body[name] {
        Value::Null => Ok(Value::Null),
        Value::String(s) => Ok(json!(optional(Some(s.clone()), name, max)?)),
        _ => Err(ApiError::invalid(format!(
            "{name}: a string of at most {max} characters"
        ))),
    }
}

/// [`required`] of field `name` of an untyped body.
pub(crate) fn required_string(body: &Value, name: &str, max: usize) -> ApiResult<String> {
    required(body[name].as_str().map(str::to_string), name, max)
}

/// Validates metadata and applies it as a merge patch over `base`.
pub fn merge_metadata(base: &Value, patch: &Value, field: &str) -> ApiResult<Value> {
    let mut out = base.as_object().cloned().unwrap_or_default();
    match patch {
        Value::Null => return Ok(Value::Object(out)),
        Value::Object(m) => {
            for (k, v) in m {
                if k.is_empty() || k.chars().count() > 64 {
                    return Err(ApiError::invalid(format!(
                        "{field}: keys are 1 to 64 characters"
                    )));
                }
                match v {
                    Value::Null => {
                        out.remove(k);
                    }
                    Value::String(s) if s.chars().count() <= 512 => {
                        out.insert(k.clone(), v.clone());
                    }
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "{field}.{k}: a string of at most 512 characters, or null to delete"
                        )));
                    }
                }
            }
        }
        _ => return Err(ApiError::invalid(format!("{field}: an object of strings"))),
    }
    if out.len() > MAX_METADATA {
        return Err(ApiError::invalid(format!(
            "{field}: at most {MAX_METADATA} pairs"
        )));
    }
    Ok(Value::Object(out))
}

/// [`merge_metadata`] on typed metadata (`null` patch: unchanged).
pub(crate) fn metadata(base: &Metadata, patch: Option<&MetadataPatch>) -> ApiResult<Metadata> {
    let merged = merge_metadata(&json!(base), &json!(patch), "metadata")?;
    serde_json::from_value(merged).map_err(|e| ApiError::invalid(format!("metadata: {e}")))
}

/// A typed request body; a field that does not fit is a 400 naming it.
pub(crate) fn body<T: serde::de::DeserializeOwned>(v: &Value) -> ApiResult<T> {
    sandstone_agents_api::from_value(v.clone()).map_err(|e| ApiError::invalid(e.to_string()))
}

/// A document this server built as JSON, as its type: failing is a bug
/// here, not a bad request.
pub(crate) fn typed<T: serde::de::DeserializeOwned>(v: Value) -> ApiResult<T> {
    sandstone_agents_api::from_value(v).map_err(|e| ApiError::internal(e.to_string()))
}

pub(crate) fn list_field(body: &Value, name: &str) -> ApiResult<Value> {
    match &body[name] {
        Value::Null => Ok(json!([])),
        Value::Array(_) => Ok(body[name].clone()),
        _ => Err(ApiError::invalid(format!("{name}: an array"))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cursors_are_checked_and_cannot_overflow() {
        let items: Vec<serde_json::Value> = (0..5).map(|i| serde_json::json!(i)).collect();
        let p = super::paginate(items.clone(), Some(2), None, 100).unwrap();
        assert_eq!(
            (p["data"].as_array().unwrap().len(), p["next_page"].as_str()),
            (2, Some("page_2"))
        );
        let last = super::paginate(items.clone(), Some(2), Some("page_4"), 100).unwrap();
        assert_eq!(last["next_page"], serde_json::Value::Null);
        let far = super::paginate(
            items.clone(),
            Some(2),
            Some(&format!("page_{}", usize::MAX)),
            100,
        )
        .unwrap();
        assert!(far["data"].as_array().unwrap().is_empty());
        assert!(super::paginate(items.clone(), Some(0), None, 100).is_err());
        assert!(super::paginate(items, None, Some("nope"), 100).is_err());
    }
}
