//! API keys: `key create|ls|rm|deactivate` (an admin key's calls).

use crate::{Cli, client, print_json};
use anyhow::Result;
use clap::Subcommand;
use sandstone_api::CreateApiKeyRequest;
use sandstone_api::auth::Role;

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
}

pub async fn run(cli: &Cli, cmd: &KeyCmd) -> Result<()> {
    let c = client(cli)?;
    match cmd {
        KeyCmd::Create {
            name,
            role,
            expires,
        } => {
            let req = CreateApiKeyRequest {
                name: name.clone(),
                roles: vec![*role],
                expires_in: Some(expires.clone()),
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
                "{:<22} {:<10} {:<7} {:<24} {:<24} NAME",
                "ID", "ROLE", "ACTIVE", "EXPIRES", "LAST USED"
            );
            for k in keys {
                println!(
                    "{:<22} {:<10} {:<7} {:<24} {:<24} {}",
                    k.id,
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
    }
}
