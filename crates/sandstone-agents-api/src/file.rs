//! Files uploaded through the Files API (`/v1/files`).

use crate::common::{Extra, tag};
use serde::{Deserialize, Serialize};

tag!(
    /// `"type": "file"`.
    FileTag = "file"
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileMetadata {
    #[serde(rename = "type")]
    pub tag: FileTag,
    pub id: String,
    pub filename: String,
    pub mime_type: String,
    pub size_bytes: u64,
    pub created_at: String,
    #[serde(default)]
    pub downloadable: Option<bool>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}
