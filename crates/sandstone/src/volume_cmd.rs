//! Sandbox volumes: `volume create|ls|rm|snapshot|fork|cp`.

use crate::exec_cmd::remote;
use crate::{Cli, client, print_json};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use sandstone_api::volumes::{AccessMode, CreateSandboxVolumeRequest};

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Create a volume and print its id.
    Create {
        /// Disk cap, e.g. 10Gi.
        #[arg(long)]
        size: Option<String>,
        /// RWO (one read-write mount at a time, the default), ROX (read-only
        /// mounts) or RWX (read-write mounts, shared).
        #[arg(long, value_parser = parse_mode)]
        access_mode: Option<AccessMode>,
        /// Owner of its root and of files written through the API.
        #[arg(long)]
        uid: Option<i64>,
        #[arg(long)]
        gid: Option<i64>,
        /// Start from this volume snapshot's files.
        #[arg(long)]
        from_snapshot: Option<String>,
    },
    /// List volumes.
    Ls,
    /// Delete volumes (refused while a sandbox mounts one).
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Snapshot a volume and print the snapshot's id.
    Snapshot {
        id: String,
        #[arg(long, default_value = "snapshot")]
        name: String,
    },
    /// Fork a volume (its files shared copy-on-write) and print the new id.
    Fork { id: String },
    /// Copy a file between the host and a volume (`VOLUME:PATH` names the
    /// volume side); no sandbox needed.
    Cp { from: String, to: String },
}

fn parse_mode(s: &str) -> Result<AccessMode, String> {
    s.parse()
}

pub async fn run(cli: &Cli, cmd: &VolumeCmd) -> Result<()> {
    let c = client(cli)?;
    match cmd {
        VolumeCmd::Create {
            size,
            access_mode,
            uid,
            gid,
            from_snapshot,
        } => {
            let req = CreateSandboxVolumeRequest {
                snapshot_id: from_snapshot.clone(),
                default_posix_uid: *uid,
                default_posix_gid: *gid,
                access_mode: *access_mode,
                size: size.clone(),
                ..Default::default()
            };
            let v = c.create_volume(&req).await?;
            if cli.json {
                return print_json(&v);
            }
            println!("{}", v.id);
            Ok(())
        }
        VolumeCmd::Ls => {
            let list = c.volumes().await?;
            if cli.json {
                return print_json(&list);
            }
            println!("{:<22} {:<5} {:>10}  MOUNTED BY", "ID", "MODE", "USED");
            for v in list {
                let used = v
                    .metered_storage_bytes
                    .map_or("-".to_string(), |b| format!("{}Mi", b >> 20));
                println!(
                    "{:<22} {:<5} {:>10}  {}",
                    v.id,
                    v.access_mode.as_str(),
                    used,
                    v.mounted_by.join(",")
                );
            }
            Ok(())
        }
        VolumeCmd::Rm { ids } => {
            for id in ids {
                c.delete_volume(id).await?;
                println!("{id}");
            }
            Ok(())
        }
        VolumeCmd::Snapshot { id, name } => {
            let s = c.snapshot_volume(id, name).await?;
            if cli.json {
                return print_json(&s);
            }
            println!("{}", s.id);
            Ok(())
        }
        VolumeCmd::Fork { id } => {
            let v = c.fork_volume(id).await?;
            if cli.json {
                return print_json(&v);
            }
            println!("{}", v.id);
            Ok(())
        }
        VolumeCmd::Cp { from, to } => match (remote(from), remote(to)) {
            (Some((id, path)), None) => {
                let bytes = c.read_volume_file(id, path).await?;
                std::fs::write(to, bytes).with_context(|| format!("write {to}"))
            }
            (None, Some((id, path))) => {
                let bytes = std::fs::read(from).with_context(|| format!("read {from}"))?;
                Ok(c.write_volume_file(id, path, bytes).await?)
            }
            _ => bail!("exactly one side must be VOLUME:PATH"),
        },
    }
}
