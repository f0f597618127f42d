//! Credential sources: `cred add|ls|rm` (values are write-only).

use crate::{Cli, client, print_json};
use anyhow::{Context, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum CredCmd {
    /// Create (or with --replace, update) a static-headers source. Header
    /// lines (`Name: value`) are read from standard input, so secrets stay
    /// out of the command line and shell history.
    Add {
        name: String,
        #[arg(long)]
        replace: bool,
    },
    /// List sources (metadata only).
    Ls,
    /// Delete sources.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub async fn run(cli: &Cli, cmd: &CredCmd) -> Result<()> {
    let c = client(cli)?;
    match cmd {
        CredCmd::Add { name, replace } => {
            let mut input = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)?;
            let mut headers = std::collections::BTreeMap::new();
            for line in input.lines().filter(|l| !l.trim().is_empty()) {
                let (k, v) = line
                    .split_once(':')
                    .context("each line must be `Header-Name: value`")?;
                headers.insert(k.trim().to_string(), v.trim().to_string());
            }
            let m = c.put_credential(name, &headers, !replace).await?;
            println!("{} (version {})", m.name, m.current_version);
            Ok(())
        }
        CredCmd::Ls => {
            let all = c.credentials().await?;
            if cli.json {
                return print_json(&all);
            }
            for m in all {
                println!(
                    "{:<24} {:<16} v{:<4} {}",
                    m.name, m.resolver_kind, m.current_version, m.updated_at
                );
            }
            Ok(())
        }
        CredCmd::Rm { names } => {
            for n in names {
                c.delete_credential(n).await?;
                println!("{n}");
            }
            Ok(())
        }
    }
}
