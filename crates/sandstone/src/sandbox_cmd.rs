//! Sandbox commands: `create`, `ls`, `inspect`, `pause`, `resume`, `fork`,
//! `rm` and `template ls`.

use crate::{Cli, client, policy_cmd, print_json};
use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct CreateArgs {
    #[arg(long, short, default_value = "default")]
    pub template: String,
    /// Memory limit, e.g. 512Mi.
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU limit in cores, e.g. 0.5.
    #[arg(long)]
    pub cpu: Option<String>,
    /// Disk cap, e.g. 5Gi (btrfs pool).
    #[arg(long)]
    pub disk: Option<String>,
    /// Pause after this many idle seconds.
    #[arg(long)]
    pub ttl: Option<u64>,
    /// Start from this snapshot's files.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Let the sandbox reach a preset (python, node, rust, go, ruby, debian,
    /// github, anthropic), a domain or a CIDR (optional `:port`); the
    /// rest stays denied. Repeatable.
    #[arg(long)]
    pub allow: Vec<String>,
    /// Deny a domain or CIDR (checked before the allows); repeatable.
    #[arg(long)]
    pub deny: Vec<String>,
    /// Only loopback: no network interface at all.
    #[arg(long, conflicts_with_all = ["allow", "deny"])]
    pub no_network: bool,
    /// Bind a sandbox volume: `VOLUME:/path` (repeatable).
    #[arg(long, value_parser = parse_mount)]
    pub mount: Vec<sandstone_api::volumes::ClaimMount>,
}

fn parse_mount(s: &str) -> Result<sandstone_api::volumes::ClaimMount, String> {
    match s.split_once(':') {
        Some((vol, at)) if !vol.is_empty() && at.starts_with('/') => {
            Ok(sandstone_api::volumes::ClaimMount {
                sandboxvolume_id: vol.to_string(),
                mount_point: at.to_string(),
            })
        }
        _ => Err(format!("{s:?}: expected VOLUME:/path")),
    }
}

pub async fn create(cli: &Cli, args: &CreateArgs) -> Result<()> {
    let network = (!args.allow.is_empty() || !args.deny.is_empty())
        .then(|| policy_cmd::policy_from_flags(None, &args.allow, &args.deny))
        .transpose()?;
    let config = sandstone_api::SandboxConfig {
        resources: Some(sandstone_api::Resources {
            memory: args.memory.clone(),
            cpu: args.cpu.clone(),
            pids: None,
            disk: args.disk.clone(),
        }),
        ttl: args.ttl,
        network,
        network_enabled: args.no_network.then_some(false),
        ..Default::default()
    };
    let c = client(cli)?
        .claim_request(&sandstone_api::ClaimRequest {
            template: Some(args.template.clone()),
            config: Some(config),
            snapshot_id: args.snapshot.clone(),
            mounts: args.mount.clone(),
        })
        .await?;
    if cli.json {
        print_json(&c)
    } else {
        println!("{}", c.sandbox_id);
        Ok(())
    }
}

pub async fn ls(cli: &Cli) -> Result<()> {
    let list = client(cli)?.list().await?;
    if cli.json {
        return print_json(&list);
    }
    println!(
        "{:<22} {:<8} {:<9} {:>4} {:>9}  {:<8} LABELS",
        "ID", "TEMPLATE", "STATUS", "GEN", "DISK", "AGE"
    );
    for s in list.sandboxes {
        let labels: Vec<String> = s.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<22} {:<8} {:<9} {:>4} {:>9}  {:<8} {}",
            s.id,
            s.template_id,
            s.status,
            s.runtime_generation,
            human_bytes(s.disk_bytes),
            age(&s.created_at),
            labels.join(",")
        );
    }
    Ok(())
}

pub async fn inspect(cli: &Cli, id: &str) -> Result<()> {
    print_json(&client(cli)?.get(id).await?)
}

pub async fn pause(cli: &Cli, ids: &[String], memory: bool) -> Result<()> {
    let c = client(cli)?;
    for id in ids {
        if memory {
            let where_ = match c.pause_with_memory(id).await?.memory {
                Some(sandstone_api::MemoryKept::Disk) => " (on disk)",
                Some(sandstone_api::MemoryKept::Frozen) => " (frozen in place: no CRIU)",
                None => "",
            };
            println!("{id} paused with its memory{where_}");
        } else {
            c.pause(id).await?;
            println!("{id} paused");
        }
    }
    Ok(())
}

pub async fn resume(cli: &Cli, ids: &[String]) -> Result<()> {
    let c = client(cli)?;
    for id in ids {
        let r = c.resume(id).await?;
        println!("{id} running (generation {})", r.runtime_generation);
    }
    Ok(())
}

pub async fn fork(cli: &Cli, id: &str) -> Result<()> {
    let f = client(cli)?.fork(id).await?;
    if cli.json {
        print_json(&f)
    } else {
        println!("{}", f.sandbox.id);
        Ok(())
    }
}

pub async fn rm(cli: &Cli, ids: &[String]) -> Result<()> {
    let c = client(cli)?;
    for id in ids {
        c.delete(id).await?;
        if !cli.json {
            println!("{id}");
        }
    }
    Ok(())
}

pub async fn templates(cli: &Cli) -> Result<()> {
    let t = client(cli)?.templates().await?;
    if cli.json {
        return print_json(&t);
    }
    for t in t.templates {
        println!("{:<10} {}", t.id, t.description);
    }
    Ok(())
}

/// Imports an image archive, or an OCI layout directory (sent as a tar
/// written to a temporary file first, its blobs streamed from there).
pub async fn import_template(cli: &Cli, name: &str, file: &std::path::Path) -> Result<()> {
    let packed;
    let path = if file.is_dir() {
        let dir = file.to_path_buf();
        packed = tokio::task::spawn_blocking(move || -> Result<tempfile::NamedTempFile> {
            let out = tempfile::NamedTempFile::new()?;
            let mut b = tar::Builder::new(out.reopen()?);
            b.follow_symlinks(false);
            b.append_dir_all(".", &dir)
                .with_context(|| format!("pack {}", dir.display()))?;
            b.finish()?;
            Ok(out)
        })
        .await??;
        packed.path().to_path_buf()
    } else {
        file.to_path_buf()
    };
    let archive = tokio::fs::File::open(&path)
        .await
        .with_context(|| format!("open {}", file.display()))?;
    let done = client(cli)?.import_template(name, archive).await?;
    if cli.json {
        return print_json(&done);
    }
    println!(
        "template {name}: {} layers ({} already here), {} unpacked",
        done["layers"],
        done["layers_reused"],
        human_bytes(done["bytes"].as_u64().unwrap_or(0))
    );
    Ok(())
}

pub async fn pull_template(cli: &Cli, name: &str, image: &str, memory: &str) -> Result<()> {
    let t = client(cli)?.pull_template(name, image, memory).await?;
    if cli.json {
        return print_json(&t);
    }
    println!("template {name}: {}", t.description);
    Ok(())
}

/// Sends the build context (the directory, with the build file as its
/// `Sandstonefile`) and prints the build's progress as it comes.
pub async fn build_template(
    cli: &Cli,
    name: &str,
    file: &std::path::Path,
    context: Option<&std::path::Path>,
) -> Result<()> {
    use sandstone_api::BuildEvent;
    let text = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
    let dir = match context {
        Some(d) => d.to_path_buf(),
        None => file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| std::path::PathBuf::from("."), |p| p.to_path_buf()),
    };
    let tar = context_tar(&dir, &text)?;
    let json = cli.json;
    let last = client(cli)?
        .build_template(name, tar, |e| {
            if json {
                println!("{}", serde_json::to_string(e).unwrap_or_default());
                return;
            }
            match e {
                BuildEvent::Step {
                    index,
                    total,
                    instruction,
                    cached,
                    ..
                } => println!(
                    "Step {index}/{total}: {instruction}{}",
                    if *cached { "  (cached)" } else { "" }
                ),
                BuildEvent::Output { text, .. } => print!("{text}"),
                BuildEvent::Done {
                    template_id,
                    version,
                    steps_run,
                    steps_cached,
                    duration_ms,
                } => println!(
                    "Built template {template_id} (version {version}) in {:.1} s: {steps_run} step(s) run, {steps_cached} cached",
                    *duration_ms as f64 / 1000.0
                ),
                BuildEvent::Failed { .. } => {}
            }
        })
        .await?;
    match last {
        BuildEvent::Failed { message, .. } => anyhow::bail!("build failed: {message}"),
        _ => Ok(()),
    }
}

/// A tar of `dir` (files and directories; what else is there is left
/// out) with `sandstonefile` as its `Sandstonefile`.
fn context_tar(dir: &std::path::Path, sandstonefile: &[u8]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    add_dir(&mut b, dir, std::path::Path::new(""))?;
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(sandstonefile.len() as u64);
    b.append_data(&mut h, "Sandstonefile", sandstonefile)?;
    Ok(b.into_inner()?)
}

fn add_dir(
    b: &mut tar::Builder<Vec<u8>>,
    dir: &std::path::Path,
    rel: &std::path::Path,
) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))?;
    for e in entries.flatten() {
        let name = rel.join(e.file_name());
        let kind = e.file_type()?;
        // The build file goes in as `Sandstonefile`, whatever its name.
        if rel.as_os_str().is_empty() && e.file_name() == "Sandstonefile" {
            continue;
        }
        if kind.is_dir() {
            b.append_dir(&name, e.path())?;
            add_dir(b, &e.path(), &name)?;
        } else if kind.is_file() {
            b.append_path_with_name(e.path(), &name)?;
        }
    }
    Ok(())
}

pub async fn prune_templates(cli: &Cli) -> Result<()> {
    let done = client(cli)?.prune_templates().await?;
    if cli.json {
        return print_json(&done);
    }
    println!(
        "removed {} build-cache entries, {} unused template versions and {} layers",
        done["cache_entries_removed"], done["versions_removed"], done["layers_removed"]
    );
    Ok(())
}

pub async fn capture_template(cli: &Cli, sandbox: &str, name: &str) -> Result<()> {
    let t = client(cli)?.capture_template(sandbox, name).await?;
    if cli.json {
        return print_json(&t);
    }
    println!("template {name}: {}", t.description);
    Ok(())
}

pub async fn delete_template(cli: &Cli, name: &str, force: bool) -> Result<()> {
    let done = client(cli)?.delete_template(name, force).await?;
    if cli.json {
        return print_json(&done);
    }
    println!(
        "template {name} deleted ({} layers removed)",
        done["layers_removed"]
    );
    Ok(())
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `2026-11-27T15:11:23.840Z` → how long ago, e.g. `3m`.
fn age(rfc3339: &str) -> String {
    let Some(then) = sandstone_api::timefmt::parse_rfc3339_us(rfc3339).map(|us| us / 1_000_000)
    else {
        return "?".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let secs = (now - then).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
