//! The nodes sharing one database: `node ls|drain|undrain`.

use crate::{Cli, client, print_json};
use anyhow::{Context, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum NodeCmd {
    /// List nodes: load, capacity, templates, lease, draining.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Stop placing new sandboxes on a node (default: this data
    /// directory's node) and, with an object store, move its paused
    /// sandboxes to other nodes. Its running sandboxes keep running there.
    Drain { id: Option<String> },
    /// Place new sandboxes on a drained node again.
    Undrain { id: Option<String> },
}

pub async fn run(cli: &Cli, cmd: &NodeCmd) -> Result<()> {
    let c = client(cli)?;
    match cmd {
        NodeCmd::Ls { json } => {
            let v = c.nodes().await?;
            if *json {
                return print_json(&v);
            }
            println!(
                "{:<20} {:<6} {:>9} {:<9} {:<28} TEMPLATES",
                "NODE", "LIVE", "RUNNING", "DRAINING", "URL"
            );
            for n in v["nodes"].as_array().into_iter().flatten() {
                let templates: Vec<&str> = n["templates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str())
                    .collect();
                println!(
                    "{:<20} {:<6} {:>9} {:<9} {:<28} {}",
                    n["id"].as_str().unwrap_or(""),
                    n["live"].as_bool().unwrap_or(false),
                    format!("{}/{}", n["running"], n["capacity"]),
                    n["draining"].as_bool().unwrap_or(false),
                    n["url"].as_str().unwrap_or(""),
                    templates.join(","),
                );
            }
            Ok(())
        }
        NodeCmd::Drain { id } => print_json(&c.set_draining(&node(cli, id)?, true).await?),
        NodeCmd::Undrain { id } => print_json(&c.set_draining(&node(cli, id)?, false).await?),
    }
}

/// `id`, else the node this data directory is.
fn node(cli: &Cli, id: &Option<String>) -> Result<String> {
    if let Some(id) = id {
        return Ok(id.clone());
    }
    let path = cli.data_dir.join("node.id");
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("no node id given and cannot read {}", path.display()))?
        .trim()
        .to_string())
}
