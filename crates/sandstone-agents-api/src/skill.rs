//! Custom skills and their immutable versions (uploaded archives).

use crate::common::{Extra, tag};
use serde::{Deserialize, Serialize};

tag!(
    /// `"type": "skill"`.
    SkillTag = "skill"
);
tag!(
    /// `"type": "skill_version"`.
    SkillVersionTag = "skill_version"
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skill {
    #[serde(rename = "type")]
    pub tag: SkillTag,
    pub id: String,
    pub display_name: String,
    pub latest_version: String,
    pub latest_version_id: String,
    pub source: SkillSource,
    pub created_at: String,
    pub updated_at: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `{"type": "custom"}` for uploaded skills.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkillSource {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkillVersion {
    #[serde(rename = "type")]
    pub tag: SkillVersionTag,
    pub id: String,
    pub skill_id: String,
    /// Microseconds since the epoch, as a string (orders versions).
    pub version: String,
    pub name: String,
    pub description: String,
    /// The directory the archive unpacks into (the skill's name).
    pub directory: String,
    pub created_at: String,
    #[serde(flatten)]
    pub extra: Extra,
}
