//! API keys and teams: `key create|ls|rm|deactivate|rotate-admin` and
//! `team create|ls` (an admin key's calls).

use crate::{Cli, client, print_json};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use sandstone_api::CreateApiKeyRequest;
use sandstone_api::auth::Role;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Make a key; its value is printed once, here.
    Create {
        /// What the key is for.
        #[arg(long)]
        name: String,
        /// admin, developer or viewer.
        #[arg(long, default_value = "developer")]
        role: Role,
        /// 30d, 12h, 90m, 30s, or never.
        #[arg(long, default_value = "never")]
        expires: String,
        /// The team (name or id) it acts in; the caller's by default.
        #[arg(long)]
        team: Option<String>,
    },
    /// List keys (never their values).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Delete a key: refused from its next request.
    Rm { id: String },
    /// Deactivate a key (kept, listed as inactive): refused from its next
    /// request.
    Deactivate { id: String },
    /// Replace the data directory's admin.token with a new admin key and
    /// delete the one it held.
    RotateAdmin,
}

pub async fn run(cli: &Cli, cmd: &KeyCmd) -> Result<()> {
    let c = client(cli)?;
    match cmd {
        KeyCmd::Create {
            name,
            role,
            expires,
            team,
        } => {
            let team_id = match team {
                None => None,
                Some(t) => Some(
                    c.teams()
                        .await?
                        .into_iter()
                        .find(|x| x.id == *t || x.name == *t)
                        .with_context(|| format!("no team {t}"))?
                        .id,
                ),
            };
            let req = CreateApiKeyRequest {
                name: name.clone(),
                roles: vec![*role],
                expires_in: Some(expires.clone()),
                team_id,
                ..Default::default()
            };
            print_json(&c.create_api_key(&req).await?)
        }
        KeyCmd::Ls { json } => {
            let keys = c.api_keys().await?;
            if *json {
                return print_json(&keys);
            }
            println!(
                "{:<22} {:<22} {:<10} {:<7} {:<24} {:<24} NAME",
                "ID", "TEAM", "ROLE", "ACTIVE", "EXPIRES", "LAST USED"
            );
            for k in keys {
                println!(
                    "{:<22} {:<22} {:<10} {:<7} {:<24} {:<24} {}",
                    k.id,
                    k.team_id,
                    k.roles.first().map_or("", |r| r.as_str()),
                    k.is_active,
                    k.expires_at,
                    k.last_used_at.as_deref().unwrap_or("-"),
                    k.name
                );
            }
            Ok(())
        }
        KeyCmd::Rm { id } => {
            c.delete_api_key(id).await?;
            println!("deleted {id}");
            Ok(())
        }
        KeyCmd::Deactivate { id } => {
            c.deactivate_api_key(id).await?;
            println!("deactivated {id}");
            Ok(())
        }
        KeyCmd::RotateAdmin => rotate_admin(cli, &c).await,
    }
}

#[derive(Subcommand)]
pub enum TeamCmd {
    /// Make a team; `key create --team NAME` then makes its keys.
    Create { name: String },
    /// List teams.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

pub async fn run_team(cli: &Cli, cmd: &TeamCmd) -> Result<()> {
    let c = client(cli)?;
    match cmd {
        TeamCmd::Create { name } => print_json(&c.create_team(name).await?),
        TeamCmd::Ls { json: true } => print_json(&c.teams().await?),
        TeamCmd::Ls { json: false } => {
            println!("{:<22} {:<24} NAME", "ID", "CREATED");
            for t in c.teams().await? {
                println!("{:<22} {:<24} {}", t.id, t.created_at, t.name);
            }
            Ok(())
        }
    }
}

/// The new key is in the file (written whole, 0600) before the old one is
/// deleted: an interruption leaves a working key in the file.
async fn rotate_admin(cli: &Cli, c: &sandstone_client::Client) -> Result<()> {
    let old = c.current_api_key().await?;
    if !old.roles.contains(&Role::Admin) {
        bail!("the key in use is not an admin key");
    }
    let req = CreateApiKeyRequest {
        name: "admin".into(),
        roles: vec![Role::Admin],
        ..Default::default()
    };
    let new = c.create_api_key(&req).await?;
    let path = cli.data_dir.join(sandstone_server::ADMIN_TOKEN_FILE);
    let tmp = cli.data_dir.join(".admin.token.rotate");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("write {}", tmp.display()))?;
    f.write_all(new.key.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("replace {}", path.display()))?;
    sandstone_client::Client::new(&cli.url, &new.key)
        .delete_api_key(&old.id)
        .await?;
    println!(
        "{} now holds admin key {}; {} is deleted",
        path.display(),
        new.id,
        old.id
    );
    Ok(())
}
