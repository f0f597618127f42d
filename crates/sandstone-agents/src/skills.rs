//! Skills: uploaded as files (multipart `files[]`, as the SDKs send them)
//! or as one zip or tar archive; each version is kept as a tar archive
//! wrapped in a single `<name>/` directory, which workers download and
//! extract. Uploads are checked the way workers extract: relative paths, no
//! `..`, regular files only, one top-level directory with a SKILL.md whose
//! frontmatter names the skill.

use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, now};
use crate::{StartError, lock, parse_stored};
use base64::Engine;
use sandstone_agents_api::{
    Deleted, Extra, Skill, SkillRef, SkillSource, SkillTag, SkillVersion, SkillVersionTag,
};
use sandstone_db::agents::AgentsStore;
use sandstone_skill_archive as skill_archive;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

pub const SKILL: &str = "skill";
pub const VERSION: &str = "skill_version";
const MAX_UPLOAD: usize = 30 << 20;
const MAX_FILES: usize = 10_000;

/// One uploaded file: path, content, whether it is executable.
pub struct File {
    pub path: String,
    pub data: Vec<u8>,
    pub executable: bool,
}

fn safe_path(p: &str) -> Option<String> {
    let p = p.trim_start_matches("./");
    let ok = !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|s| !s.is_empty() && s != "." && s != "..");
    ok.then(|| p.to_string())
}

/// The files of an archive upload (zip, tar, or gzipped tar: by content),
/// read as workers read them, within the upload limits.
pub fn expand(bytes: &[u8]) -> ApiResult<Vec<File>> {
    let limits = skill_archive::Limits {
        max_files: MAX_FILES,
        max_total_bytes: MAX_UPLOAD as u64,
        max_file_bytes: MAX_UPLOAD as u64,
    };
    let unpacked = skill_archive::files(bytes, &limits)
        .map_err(|e| ApiError::invalid(format!("files: {e}")))?;
    Ok(unpacked
        .files
        .into_iter()
        .map(|f| File {
            executable: f.mode & 0o111 != 0,
            path: f.path,
            data: f.data,
        })
        .collect())
}

pub use skill_archive::is_archive;

/// `name` and `description` from SKILL.md's frontmatter.
fn frontmatter(text: &str) -> ApiResult<(String, String)> {
    let body = text
        .strip_prefix("---")
        .and_then(|t| t.split_once("\n---"))
        .map(|(fm, _)| fm)
        .ok_or_else(|| {
            ApiError::invalid("files: SKILL.md must start with a --- frontmatter block")
        })?;
    let field = |k: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    let name = field("name").unwrap_or_default();
    let slug = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !slug {
        return Err(ApiError::invalid(
            "files: SKILL.md frontmatter needs name: 1-64 of a-z 0-9 -",
        ));
    }
    Ok((name, field("description").unwrap_or_default()))
}

/// Checks an upload and returns (name, description, files relative to
/// the skill's directory).
fn validate(files: Vec<File>) -> ApiResult<(String, String, Vec<File>)> {
    let total: usize = files.iter().map(|f| f.data.len()).sum();
    if files.is_empty() || total > MAX_UPLOAD {
        return Err(ApiError::invalid(format!(
            "files: 1 or more files, at most {MAX_UPLOAD} bytes in all"
        )));
    }
    if let Some(f) = files
        .iter()
        .find(|f| safe_path(&f.path).as_deref() != Some(f.path.as_str()))
    {
        return Err(ApiError::invalid(format!(
            "files: unsafe path {:?}",
            f.path
        )));
    }
    let top = files[0]
        .path
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let wrapped = files.iter().all(|f| f.path.starts_with(&format!("{top}/")));
    let files: Vec<File> = files
        .into_iter()
        .map(|f| File {
            path: if wrapped {
                f.path[top.len() + 1..].to_string()
            } else {
                f.path
            },
            ..f
        })
        .collect();
    let skill_md = files.iter().find(|f| f.path == "SKILL.md").ok_or_else(|| {
        ApiError::invalid("files: a SKILL.md at the root of the skill's directory")
    })?;
    let (name, description) = frontmatter(&String::from_utf8_lossy(&skill_md.data))?;
    Ok((name, description, files))
}

/// A tar archive of `files` under `<name>/`.
fn archive(name: &str, files: &[File]) -> ApiResult<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for f in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(f.data.len() as u64);
        h.set_mode(if f.executable { 0o755 } else { 0o644 });
        h.set_mtime(0);
        b.append_data(&mut h, format!("{name}/{}", f.path), f.data.as_slice())
            .map_err(|e| ApiError::invalid(format!("files: {}: {e}", f.path)))?;
    }
    b.into_inner()
        .map_err(|e| ApiError::internal(e.to_string()))
}

#[derive(Default)]
struct SkillsState {
    skills: BTreeMap<String, Skill>,
    /// Versions by id, with their archives.
    versions: BTreeMap<String, Version>,
}

/// A version with its archive.
#[derive(Clone)]
pub(crate) struct Version {
    pub doc: SkillVersion,
    pub archive: Vec<u8>,
}

/// How a version is stored: its document and its archive in base64.
#[derive(Serialize, Deserialize)]
struct Stored {
    doc: SkillVersion,
    archive: String,
}

/// Skills and their versions.
pub(crate) struct Skills {
    store: Arc<dyn AgentsStore>,
    state: Mutex<SkillsState>,
    /// Held (shared) by each change across its store write and cache
    /// update, and alone by a reload across its read and swap: a reload
    /// that read the store before a change committed must not put its
    /// older copy over the change.
    gate: tokio::sync::RwLock<()>,
}

impl Skills {
    pub(crate) async fn load(store: Arc<dyn AgentsStore>) -> Result<Skills, StartError> {
        let st = Skills::read(&*store).await?;
        Ok(Skills {
            store,
            state: Mutex::new(st),
            gate: tokio::sync::RwLock::new(()),
        })
    }

    /// Reads everything again (another node changed something).
    pub(crate) async fn reload(&self) -> Result<(), StartError> {
        let _gate = self.gate.write().await;
        let st = Skills::read(&*self.store).await?;
        *self.state() = st;
        Ok(())
    }

    async fn read(store: &dyn AgentsStore) -> Result<SkillsState, StartError> {
        let mut st = SkillsState::default();
        for s in store.load_docs(SKILL).await? {
            let s: Skill = parse_stored(SKILL, s)?;
            st.skills.insert(s.id.clone(), s);
        }
        for v in store.load_docs(VERSION).await? {
            let Stored { doc, archive } = parse_stored(VERSION, v)?;
            let archive = base64::engine::general_purpose::STANDARD
                .decode(&archive)
                .map_err(|e| StartError::Corrupt {
                    kind: VERSION,
                    id: doc.id.clone(),
                    message: format!("archive: {e}"),
                })?;
            st.versions.insert(doc.id.clone(), Version { doc, archive });
        }
        Ok(st)
    }

    fn state(&self) -> MutexGuard<'_, SkillsState> {
        lock(&self.state)
    }

    async fn put_version(&self, skill: &str, files: Vec<File>) -> ApiResult<SkillVersion> {
        let (name, description, files) = validate(files)?;
        let tar = archive(&name, &files)?;
        let doc = SkillVersion {
            tag: SkillVersionTag,
            id: new_id("skillver"),
            skill_id: skill.to_string(),
            version: sandstone_api::timefmt::now_us().to_string(),
            directory: name.clone(),
            name,
            description,
            created_at: now(),
            extra: Extra::new(),
        };
        let stored = Stored {
            doc,
            archive: base64::engine::general_purpose::STANDARD.encode(&tar),
        };
        self.store
            .put_doc(VERSION, &stored.doc.id, &json!(stored))
            .await?;
        let doc = stored.doc;
        let version = Version {
            doc: doc.clone(),
            archive: tar,
        };
        self.state().versions.insert(doc.id.clone(), version);
        Ok(doc)
    }

    pub(crate) async fn create_skill(
        &self,
        files: Vec<File>,
        display_name: Option<String>,
    ) -> ApiResult<Skill> {
        let _gate = self.gate.read().await;
        let id = new_id("skill");
        let version = self.put_version(&id, files).await?;
        let t = now();
        let doc = Skill {
            tag: SkillTag,
            id: id.clone(),
            display_name: display_name.unwrap_or_else(|| version.name.clone()),
            latest_version: version.version,
            latest_version_id: version.id.clone(),
            source: SkillSource {
                kind: "custom".into(),
                extra: Extra::new(),
            },
            created_at: t.clone(),
            updated_at: t,
            extra: Extra::new(),
        };
        if let Err(e) = self.store.put_doc(SKILL, &id, &json!(doc)).await {
            // No version without its skill.
            self.state().versions.remove(&version.id);
            let _ = self.store.delete_doc(VERSION, &version.id).await;
            return Err(e.into());
        }
        self.state().skills.insert(id, doc.clone());
        Ok(doc)
    }

    pub(crate) async fn create_skill_version(
        &self,
        id: &str,
        files: Vec<File>,
    ) -> ApiResult<SkillVersion> {
        let _gate = self.gate.read().await;
        let mut skill = self.skill(id)?;
        let version = self.put_version(id, files).await?;
        skill.latest_version = version.version.clone();
        skill.latest_version_id = version.id.clone();
        skill.updated_at = now();
        self.store.put_doc(SKILL, id, &json!(skill)).await?;
        self.state().skills.insert(id.to_string(), skill);
        Ok(version)
    }

    pub(crate) fn skill(&self, id: &str) -> ApiResult<Skill> {
        self.state()
            .skills
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::not_found("skill", id))
    }

    pub(crate) fn skills(&self) -> Vec<Skill> {
        let mut out: Vec<Skill> = self.state().skills.values().cloned().collect();
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        out
    }

    pub(crate) fn skill_versions(&self, id: &str) -> ApiResult<Vec<SkillVersion>> {
        self.skill(id)?;
        let st = self.state();
        let mut out: Vec<SkillVersion> = st
            .versions
            .values()
            .filter(|v| v.doc.skill_id == id)
            .map(|v| v.doc.clone())
            .collect();
        out.sort_by(|a, b| b.version.cmp(&a.version));
        Ok(out)
    }

    /// A version by id, by version string, or `latest`.
    pub(crate) fn skill_version(&self, id: &str, version: &str) -> ApiResult<Version> {
        let skill = self.skill(id)?;
        let want = if version == "latest" {
            skill.latest_version_id.as_str()
        } else {
            version
        };
        let st = self.state();
        st.versions
            .values()
            .find(|v| v.doc.skill_id == id && (v.doc.id == want || v.doc.version == want))
            .cloned()
            .ok_or_else(|| ApiError::not_found("skill version", &format!("{id}/{version}")))
    }

    pub(crate) async fn delete_skill(&self, id: &str) -> ApiResult<Deleted> {
        let _gate = self.gate.read().await;
        let versions = self.skill_versions(id)?;
        for v in &versions {
            self.store.delete_doc(VERSION, &v.id).await?;
        }
        self.store.delete_doc(SKILL, id).await?;
        let mut st = self.state();
        st.skills.remove(id);
        st.versions.retain(|_, v| v.doc.skill_id != id);
        Ok(Deleted {
            id: id.to_string(),
            kind: "skill_deleted".into(),
        })
    }

    /// Deletes one version (by id, version string or `latest`). A skill
    /// always holds one: its last version goes with the skill. The skill
    /// is repointed first, so a failure part-way leaves `latest` on a
    /// version that exists.
    pub(crate) async fn delete_skill_version(&self, id: &str, version: &str) -> ApiResult<Deleted> {
        let _gate = self.gate.read().await;
        let doomed = self.skill_version(id, version)?.doc;
        let rest: Vec<SkillVersion> = self
            .skill_versions(id)?
            .into_iter()
            .filter(|v| v.id != doomed.id)
            .collect();
        let Some(newest) = rest.first() else {
            return Err(ApiError::Conflict(format!(
                "version {} is skill {id}'s last: delete the skill instead",
                doomed.version
            )));
        };
        let mut skill = self.skill(id)?;
        if skill.latest_version_id == doomed.id {
            skill.latest_version = newest.version.clone();
            skill.latest_version_id = newest.id.clone();
            skill.updated_at = now();
            self.store.put_doc(SKILL, id, &json!(skill)).await?;
            self.state().skills.insert(id.to_string(), skill);
        }
        self.store.delete_doc(VERSION, &doomed.id).await?;
        self.state().versions.retain(|_, v| v.doc.id != doomed.id);
        Ok(Deleted {
            id: doomed.id,
            kind: "skill_version_deleted".into(),
        })
    }

    /// Resolves an agent's `skills` to concrete versions.
    pub(crate) fn resolve(&self, v: &Value) -> ApiResult<Value> {
        let resolved = v
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, s)| {
                let at = format!("skills[{i}]");
                let s: SkillRef = sandstone_agents_api::from_value(s.clone())
                    .map_err(|e| ApiError::invalid(format!("{at}.{e}")))?;
                if s.kind != "custom" {
                    return Err(ApiError::invalid(format!(
                        "{at}.type: custom (Anthropic's prebuilt skills exist only on the hosted service; upload them as custom skills)"
                    )));
                }
                let want = s.version.as_deref().unwrap_or("latest");
                let version = self.skill_version(&s.skill_id, want).map_err(|_| {
                    ApiError::invalid(format!(
                        "{at}: skill {} version {want} does not exist",
                        s.skill_id
                    ))
                })?;
                Ok(SkillRef {
                    kind: s.kind,
                    skill_id: s.skill_id,
                    version: Some(version.doc.version),
                    extra: Extra::new(),
                })
            })
            .collect::<ApiResult<Vec<_>>>()?;
        Ok(json!(resolved))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &str) -> File {
        File {
            path: path.into(),
            data: data.as_bytes().to_vec(),
            executable: path.ends_with(".sh"),
        }
    }

    #[test]
    fn uploads_are_checked_and_rewrapped() {
        let skill = "---\nname: hello-skill\ndescription: says hello\n---\nbody";
        let (name, desc, files) = validate(vec![
            file("x/SKILL.md", skill),
            file("x/bin/run.sh", "echo"),
        ])
        .unwrap();
        assert_eq!(
            (name.as_str(), desc.as_str()),
            ("hello-skill", "says hello")
        );
        let tar = archive(&name, &files).unwrap();
        let back = expand(&tar).unwrap();
        let paths: Vec<(&str, bool)> = back
            .iter()
            .map(|f| (f.path.as_str(), f.executable))
            .collect();
        assert_eq!(
            paths,
            vec![
                ("hello-skill/SKILL.md", false),
                ("hello-skill/bin/run.sh", true)
            ]
        );
        assert!(is_archive(&tar));
        assert!(
            safe_path("../etc/passwd").is_none()
                && safe_path("/abs").is_none()
                && safe_path("a//b").is_none()
        );
        assert!(validate(vec![file("x/README", "no skill")]).is_err());
        assert!(validate(vec![file("../SKILL.md", skill)]).is_err());
    }

    #[test]
    fn a_small_archive_cannot_expand_past_the_limit() {
        let mut b = tar::Builder::new(Vec::new());
        let big = vec![0u8; MAX_UPLOAD + 1];
        let mut h = tar::Header::new_ustar();
        h.set_size(big.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "x/zeros", big.as_slice()).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &b.into_inner().unwrap()).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        let err = expand(&bomb).err().expect("refused");
        assert!(err.to_string().contains("archive exceeds the"), "{err}");
        assert!(validate(vec![file("SKILL.md", "---\nname: Bad Name\n---\n")]).is_err());
    }
}
