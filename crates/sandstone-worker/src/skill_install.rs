//! Puts a session agent's skills into its sandbox at
//! `/workspace/skills/<name>`: downloaded with the item's token, unpacked
//! safely here (never inside the sandbox), staged beside the destination
//! and moved over it, so a failure leaves the old copy or nothing.

use crate::cma::{Cma, CmaError};
use crate::secret::Secret;
use sandstone_agents_api::Session;
use sandstone_client::Client;
use sandstone_skill_archive as skills;

const SKILLS_DIR: &str = "/workspace/skills";

/// Why one skill was not installed (the others still are).
#[derive(Debug, thiserror::Error)]
pub enum SkillError {
    #[error("control plane: {0}")]
    Cma(#[from] CmaError),
    #[error(transparent)]
    Archive(#[from] skills::UnpackError),
    #[error("sandbox: {0}")]
    Sandbox(#[from] sandstone_client::Error),
}

pub struct Installer<'a> {
    pub cma: &'a Cma,
    pub token: &'a Secret,
    pub client: &'a Client,
    pub sandbox: &'a str,
}

impl Installer<'_> {
    /// Installs every skill it can; one skill's failure is logged and the
    /// others continue. Returns the directories it created.
    pub async fn install_all(&self, session: &Session) -> Vec<String> {
        let mut created = Vec::new();
        for s in &session.agent.skills {
            let skill = s.skill_id.as_str();
            let version = s.version.as_deref().unwrap_or("latest");
            match self.install(skill, version).await {
                Ok(dir) => created.push(dir),
                Err(e) => tracing::warn!(skill, error = %e, "skill not installed"),
            }
        }
        created
    }

    async fn install(&self, skill: &str, version: &str) -> Result<String, SkillError> {
        let v = self.cma.skill_version(skill, version, self.token).await?;
        let name = skills::dir_name(&v.name, skill)?;
        let archive = self.cma.skill_content(skill, &v.id, self.token).await?;
        let unpacked = skills::unpack(&archive, &skills::Limits::default())?;
        for s in &unpacked.skipped {
            tracing::info!(skill, entry = %s, "archive entry skipped");
        }
        let dest = format!("{SKILLS_DIR}/{name}");
        let stage = format!("{SKILLS_DIR}/.skill-{}", sandstone_api::random_hex(6));
        let placed = self.place(&unpacked.files, &stage, &dest).await;
        if placed.is_err() {
            let _ = self.client.remove_path(self.sandbox, &stage).await;
        }
        placed?;
        tracing::info!(skill, dir = %dest, files = unpacked.files.len(), "skill installed");
        Ok(dest)
    }

    async fn place(
        &self,
        files: &[skills::SkillFile],
        stage: &str,
        dest: &str,
    ) -> Result<(), sandstone_client::Error> {
        let (c, sb) = (self.client, self.sandbox);
        c.mkdir(sb, stage).await?;
        for f in files {
            c.write_file_mode(sb, &format!("{stage}/{}", f.path), f.data.clone(), f.mode)
                .await?;
        }
        match c.remove_path(sb, dest).await {
            Ok(()) => {}
            Err(e) if sandstone_client::is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
        c.move_path(sb, stage, dest).await
    }

    /// Teardown: removes what `install_all` created, nothing else.
    pub async fn remove(&self, dirs: &[String]) {
        for d in dirs {
            if let Err(e) = self.client.remove_path(self.sandbox, d).await {
                tracing::debug!(dir = %d, error = %e, "skill directory not removed");
            }
        }
    }
}
