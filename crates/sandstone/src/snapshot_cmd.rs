//! Snapshots of sandboxes' files: `snapshot create|ls|rm` and `restore`.

use crate::{Cli, client, print_json};
use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot a sandbox (running or paused).
    Create {
        id: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// List a sandbox's snapshots.
    Ls { id: String },
    /// Delete snapshots.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

pub async fn run(cli: &Cli, cmd: &SnapshotCmd) -> Result<()> {
    let c = client(cli)?;
    match cmd {
        SnapshotCmd::Create { id, name } => {
            let s = c.snapshot(id, name.as_deref()).await?;
            if cli.json {
                print_json(&s)
            } else {
                println!("{}", s.id);
                Ok(())
            }
        }
        SnapshotCmd::Ls { id } => {
            let l = c.snapshots(id).await?;
            if cli.json {
                return print_json(&l);
            }
            println!("{:<24} {:<22} {:<16} CREATED", "ID", "SANDBOX", "NAME");
            for s in l.snapshots {
                println!(
                    "{:<24} {:<22} {:<16} {}",
                    s.id, s.sandbox_id, s.name, s.created_at
                );
            }
            Ok(())
        }
        SnapshotCmd::Rm { ids } => {
            for id in ids {
                c.delete_snapshot(id).await?;
                println!("{id}");
            }
            Ok(())
        }
    }
}

/// Replaces a paused sandbox's files with a snapshot's.
pub async fn restore(cli: &Cli, id: &str, snapshot: &str) -> Result<()> {
    client(cli)?.restore(id, snapshot).await?;
    println!("{id} restored from {snapshot}");
    Ok(())
}
