//! The `sandstone` command: the daemon (`serve`), host set-up (`setup`) and
//! client commands against a running daemon.

mod agents_cmd;
mod bench;
mod bench_durable;
mod policy_cmd;
mod terminal;
mod worker_cmd;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use sandstone_client::Client;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "sandstone",
    version,
    about = "Self-hosted sandboxes for AI agents"
)]
struct Cli {
    /// Daemon URL for client commands.
    #[arg(
        long,
        global = true,
        env = "SANDSTONE_URL",
        default_value = "http://127.0.0.1:7700"
    )]
    url: String,
    /// Data directory (the daemon's state; the CLI reads admin.token from it).
    #[arg(
        long,
        global = true,
        env = "SANDSTONE_DATA_DIR",
        default_value = "/var/lib/sandstone"
    )]
    data_dir: PathBuf,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Prepare the host: checks, data directory, `host` and `debian` templates.
    Setup {
        /// Skip the `default` and `debian` templates (debootstrap, about
        /// 90 s each, once).
        #[arg(long)]
        no_debian: bool,
        /// Debian mirror for debootstrap.
        #[arg(long, env = "SANDSTONE_DEBIAN_MIRROR")]
        mirror: Option<String>,
        /// Size of the btrfs pool image (sparse; only used when the data
        /// directory is not on btrfs already), in GiB.
        #[arg(long, default_value_t = 64)]
        pool_gib: u64,
        /// Keep the plain-directory pool (no btrfs).
        #[arg(long)]
        no_pool: bool,
    },
    /// Run the daemon.
    Serve {
        #[arg(long, env = "SANDSTONE_LISTEN", default_value = "127.0.0.1:7700")]
        listen: std::net::SocketAddr,
        /// Storage pool driver: btrfs or dir (default: btrfs when set up).
        #[arg(long, env = "SANDSTONE_POOL")]
        pool: Option<PoolArg>,
        /// Sandboxes kept ready per template, so a claim is a handoff.
        #[arg(long, env = "SANDSTONE_WARM_POOL", default_value_t = 2)]
        warm_pool: usize,
        /// The private IPv4 pool sandboxes' subnets come from (e.g.
        /// 10.200.0.0/14). Default: the one `sandstone setup` chose and
        /// recorded in the data directory (chosen now if there is none).
        #[arg(long, env = "SANDSTONE_EGRESS_POOL")]
        egress_pool: Option<String>,
        /// Give sandboxes only loopback (no interface, no egress proxy).
        #[arg(long, env = "SANDSTONE_NO_NETWORK", conflicts_with = "egress_pool")]
        no_network: bool,
        /// Resolver (ip:port) the policy DNS forwards allowed names to
        /// (default: the host's first nameserver).
        #[arg(long, env = "SANDSTONE_DNS_UPSTREAM")]
        dns_upstream: Option<std::net::SocketAddr>,
        /// Days egress audit records are kept.
        #[arg(long, env = "SANDSTONE_AUDIT_RETENTION_DAYS", default_value_t = 7)]
        audit_retention_days: u64,
        /// Operator egress rules (JSON: allow, deny, denyDomains,
        /// upstreamCaFiles), applied before any sandbox's policy.
        #[arg(long, env = "SANDSTONE_EGRESS_CONFIG")]
        egress_config: Option<PathBuf>,
        /// Messages API the Managed Agents loop calls (its key comes from
        /// SANDSTONE_MODEL_API_KEY, never from the command line).
        #[arg(
            long,
            env = "SANDSTONE_MODEL_BASE_URL",
            default_value = "https://api.anthropic.com"
        )]
        model_base_url: String,
        /// A file holding the Messages API key (instead of the variable).
        #[arg(long, env = "SANDSTONE_MODEL_API_KEY_FILE")]
        model_api_key_file: Option<PathBuf>,
        /// Seconds a Managed Agents work item's lease lasts between heartbeats.
        #[arg(long, env = "SANDSTONE_LEASE_TTL_SECONDS", default_value_t = 300)]
        lease_ttl_seconds: u64,
    },
    /// Create a sandbox and print its id.
    Create {
        #[arg(long, short, default_value = "default")]
        template: String,
        /// Memory limit, e.g. 512Mi.
        #[arg(long)]
        memory: Option<String>,
        /// CPU limit in cores, e.g. 0.5.
        #[arg(long)]
        cpu: Option<String>,
        /// Disk cap, e.g. 5Gi (btrfs pool).
        #[arg(long)]
        disk: Option<String>,
        /// Pause after this many idle seconds.
        #[arg(long)]
        ttl: Option<u64>,
        /// Start from this snapshot's files.
        #[arg(long)]
        snapshot: Option<String>,
        /// Let the sandbox reach a preset (python, node, rust, go, debian,
        /// github, anthropic), a domain or a CIDR (optional `:port`); the
        /// rest stays denied. Repeatable.
        #[arg(long)]
        allow: Vec<String>,
        /// Deny a domain or CIDR (checked before the allows); repeatable.
        #[arg(long)]
        deny: Vec<String>,
        /// Only loopback: no network interface at all.
        #[arg(long, conflicts_with_all = ["allow", "deny"])]
        no_network: bool,
    },
    /// Pause sandboxes (processes end, files stay).
    Pause {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Resume paused sandboxes.
    Resume {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Fork a sandbox: a new paused sandbox sharing its files copy-on-write.
    Fork { id: String },
    /// Replace a paused sandbox's files with a snapshot's.
    Restore { id: String, snapshot: String },
    /// Snapshots of sandboxes' files.
    Snapshot {
        #[command(subcommand)]
        cmd: SnapshotCmd,
    },
    /// A sandbox's network policy.
    Policy {
        #[command(subcommand)]
        cmd: policy_cmd::PolicyCmd,
    },
    /// Managed Agents environments and their keys.
    Env {
        #[command(subcommand)]
        cmd: agents_cmd::EnvCmd,
    },
    /// Managed Agents agents.
    Agent {
        #[command(subcommand)]
        cmd: agents_cmd::AgentCmd,
    },
    /// Managed Agents sessions: create, send, follow.
    Session {
        #[command(subcommand)]
        cmd: agents_cmd::SessionCmd,
    },
    /// The Managed Agents environment worker: serves a `self_hosted`
    /// environment's sessions, each in its own durable sandbox.
    Worker {
        #[command(subcommand)]
        cmd: worker_cmd::WorkerCmd,
    },
    /// Credential sources (values are write-only).
    Cred {
        #[command(subcommand)]
        cmd: CredCmd,
    },
    /// A sandbox's egress audit records (connections, DNS answers, drops).
    Audit {
        id: String,
        /// Keep printing new records.
        #[arg(long)]
        follow: bool,
        /// Only denials.
        #[arg(long)]
        denied: bool,
    },
    /// List sandboxes.
    Ls,
    /// Show one sandbox.
    Inspect { id: String },
    /// Run a command in a sandbox; exits with the command's exit code.
    Exec {
        id: String,
        #[arg(long)]
        cwd: Option<String>,
        #[arg(long)]
        timeout: Option<u64>,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Open an interactive shell (PTY) in a sandbox.
    Shell {
        id: String,
        /// Program to run instead of bash.
        #[arg(trailing_var_arg = true)]
        command: Vec<String>,
    },
    /// Copy a file between the host and a sandbox (`SANDBOX:PATH` names the sandbox side).
    Cp { from: String, to: String },
    /// Delete sandboxes.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Measure create, exec, REPL and file latency against the daemon.
    Bench {
        #[arg(long, default_value = "host")]
        template: String,
        #[arg(long, short, default_value_t = 50)]
        iterations: usize,
        /// How many sandboxes to hold at once for the scale figures.
        #[arg(long, default_value_t = 200)]
        scale: usize,
        /// Measure the durable operations instead (pause, resume, snapshot,
        /// fork, warm-pool claims, paused sandboxes' memory).
        #[arg(long)]
        durable: bool,
        /// With --durable: how many sandboxes to hold paused.
        #[arg(long, default_value_t = 1000)]
        paused: usize,
    },
    /// Templates.
    Template {
        #[command(subcommand)]
        cmd: TemplateCmd,
    },
}

#[derive(Subcommand)]
enum CredCmd {
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

#[derive(Subcommand)]
enum SnapshotCmd {
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum PoolArg {
    Btrfs,
    Dir,
}

#[derive(Subcommand)]
enum TemplateCmd {
    /// List templates.
    Ls,
}

fn main() {
    let cli = Cli::parse();
    // The daemon's descriptors reach every sandbox it starts unless they
    // are close-on-exec; those it inherited are not, so they go before any
    // thread exists.
    if matches!(cli.cmd, Cmd::Serve { .. })
        && let Err(e) = sandstone_sys::fd::close_from(3)
    {
        eprintln!("sandstone: close descriptors from 3: {e}");
        std::process::exit(1);
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli)));
    if let Err(e) = result {
        // The message chain, not a backtrace: this is what users read.
        eprintln!("sandstone: {e:#}");
        std::process::exit(1);
    }
}

/// Logs go to stderr; JSON when asked for (`--log-format json` or
/// `SANDSTONE_LOG_FORMAT=json`).
fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SANDSTONE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = json || std::env::var("SANDSTONE_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// `SANDSTONE_INIT`, else `sandstone-init` beside this executable.
fn init_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("SANDSTONE_INIT") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name("sandstone-init"))
}

fn client(cli: &Cli) -> Result<Client> {
    Ok(Client::new(&cli.url, &admin_token(cli)?))
}

/// `SANDSTONE_TOKEN`, else the daemon's admin token file.
fn admin_token(cli: &Cli) -> Result<String> {
    match std::env::var("SANDSTONE_TOKEN") {
        Ok(t) => Ok(t),
        Err(_) => {
            let path = cli.data_dir.join(sandstone_server::ADMIN_TOKEN_FILE);
            Ok(std::fs::read_to_string(&path)
                .with_context(|| format!("no SANDSTONE_TOKEN and cannot read {}", path.display()))?
                .trim()
                .to_string())
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Setup {
            no_debian,
            mirror,
            pool_gib,
            no_pool,
        } => {
            let pool = (!no_pool).then_some(pool_gib << 30);
            setup(&cli.data_dir, !no_debian, mirror.as_deref(), pool)
        }
        Cmd::Serve {
            listen,
            pool,
            warm_pool,
            egress_pool,
            no_network,
            dns_upstream,
            audit_retention_days,
            egress_config,
            model_base_url,
            model_api_key_file,
            lease_ttl_seconds,
        } => {
            let model_api_key = match model_api_key_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("read {}", f.display()))?
                        .trim()
                        .to_string(),
                ),
                None => std::env::var("SANDSTONE_MODEL_API_KEY").ok(),
            };
            init_logging(false);
            let config = sandstone_server::Config {
                data_dir: cli.data_dir.clone(),
                listen: *listen,
                init_bin: init_binary()?,
                pool: pool.map(|p| match p {
                    PoolArg::Btrfs => sandstone_volumes::Driver::Btrfs,
                    PoolArg::Dir => sandstone_volumes::Driver::Dir,
                }),
                warm_pool: *warm_pool,
                egress_pool: match (no_network, egress_pool) {
                    (true, _) => None,
                    (false, Some(pool)) => Some(pool.clone()),
                    (false, None) => {
                        std::fs::create_dir_all(&cli.data_dir)?;
                        Some(sandstone_server::netpool::recorded_or_choose(
                            &cli.data_dir,
                        )?)
                    }
                },
                dns_upstream: *dns_upstream,
                audit_retention: std::time::Duration::from_secs(
                    audit_retention_days.saturating_mul(86_400),
                ),
                egress_config: egress_config.clone(),
                agents: sandstone_agents::Config {
                    model_base_url: model_base_url.clone(),
                    model_api_key,
                    lease_ttl: std::time::Duration::from_secs(*lease_ttl_seconds),
                    max_tokens: 8192,
                },
            };
            sandstone_server::run(config).await
        }
        Cmd::Create {
            template,
            memory,
            cpu,
            disk,
            ttl,
            snapshot,
            allow,
            deny,
            no_network,
        } => {
            let network = (!allow.is_empty() || !deny.is_empty())
                .then(|| policy_cmd::policy_from_flags(None, allow, deny))
                .transpose()?;
            let config = sandstone_api::SandboxConfig {
                resources: Some(sandstone_api::Resources {
                    memory: memory.clone(),
                    cpu: cpu.clone(),
                    pids: None,
                    disk: disk.clone(),
                }),
                ttl: *ttl,
                network,
                network_enabled: no_network.then_some(false),
                ..Default::default()
            };
            let c = client(&cli)?
                .claim_from(template, Some(config), snapshot.as_deref())
                .await?;
            if cli.json {
                print_json(&c)
            } else {
                println!("{}", c.sandbox_id);
                Ok(())
            }
        }
        Cmd::Ls => {
            let list = client(&cli)?.list().await?;
            if cli.json {
                return print_json(&list);
            }
            println!(
                "{:<22} {:<8} {:<9} {:>4} {:>9}  {:<8} LABELS",
                "ID", "TEMPLATE", "STATUS", "GEN", "DISK", "AGE"
            );
            for s in list.sandboxes {
                let labels: Vec<String> =
                    s.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
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
        Cmd::Pause { ids } => {
            let c = client(&cli)?;
            for id in ids {
                c.pause(id).await?;
                println!("{id} paused");
            }
            Ok(())
        }
        Cmd::Resume { ids } => {
            let c = client(&cli)?;
            for id in ids {
                let r = c.resume(id).await?;
                println!("{id} running (generation {})", r.runtime_generation);
            }
            Ok(())
        }
        Cmd::Fork { id } => {
            let f = client(&cli)?.fork(id).await?;
            if cli.json {
                print_json(&f)
            } else {
                println!("{}", f.sandbox.id);
                Ok(())
            }
        }
        Cmd::Restore { id, snapshot } => {
            client(&cli)?.restore(id, snapshot).await?;
            println!("{id} restored from {snapshot}");
            Ok(())
        }
        Cmd::Snapshot { cmd } => snapshot_cmd(&cli, cmd).await,
        Cmd::Policy { cmd } => policy_cmd::run(&cli, cmd).await,
        Cmd::Cred { cmd } => cred_cmd(&cli, cmd).await,
        Cmd::Env { cmd } => agents_cmd::env(&client(&cli)?, cmd).await,
        Cmd::Agent { cmd } => agents_cmd::agent(&client(&cli)?, cmd).await,
        Cmd::Session { cmd } => agents_cmd::session(&client(&cli)?, cmd).await,
        Cmd::Worker { cmd } => {
            init_logging(matches!(cmd.log_format(), worker_cmd::LogFormat::Json));
            worker_cmd::run(cmd, &cli.url, || admin_token(&cli)).await
        }
        Cmd::Audit { id, follow, denied } => policy_cmd::audit(&cli, id, *follow, *denied).await,
        Cmd::Inspect { id } => print_json(&client(&cli)?.get(id).await?),
        Cmd::Exec {
            id,
            cwd,
            timeout,
            command,
        } => {
            let c = client(&cli)?;
            let code = if cli.json {
                let r = c.run(id, command, cwd.as_deref(), *timeout).await?;
                print_json(&r)?;
                r.exit_code.unwrap_or(1)
            } else {
                let ctx = c.start(id, command, cwd.as_deref(), None, *timeout).await?;
                terminal::stream(&mut c.attach(id, &ctx).await?).await?
            };
            std::process::exit(code);
        }
        Cmd::Shell { id, command } => {
            let c = client(&cli)?;
            let argv = if command.is_empty() {
                vec!["bash".to_string(), "-i".to_string()]
            } else {
                command.clone()
            };
            let code = terminal::interactive(&c, id, &argv).await?;
            std::process::exit(code);
        }
        Cmd::Cp { from, to } => copy(&client(&cli)?, from, to).await,
        Cmd::Rm { ids } => {
            let c = client(&cli)?;
            for id in ids {
                c.delete(id).await?;
                if !cli.json {
                    println!("{id}");
                }
            }
            Ok(())
        }
        Cmd::Bench {
            template,
            iterations,
            scale,
            durable,
            paused,
        } => {
            let c = client(&cli)?;
            let n = (*iterations).max(2);
            if *durable {
                bench_durable::run(&c, template, n, *paused).await
            } else {
                bench::run(&c, template, n, *scale).await
            }
        }
        Cmd::Template {
            cmd: TemplateCmd::Ls,
        } => {
            let t = client(&cli)?.templates().await?;
            if cli.json {
                return print_json(&t);
            }
            for t in t.templates {
                println!("{:<10} {}", t.id, t.description);
            }
            Ok(())
        }
    }
}

async fn snapshot_cmd(cli: &Cli, cmd: &SnapshotCmd) -> Result<()> {
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

async fn cred_cmd(cli: &Cli, cmd: &CredCmd) -> Result<()> {
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

/// Splits `SANDBOX:PATH`; a host path has no colon before its first slash.
fn remote(spec: &str) -> Option<(&str, &str)> {
    let (id, path) = spec.split_once(':')?;
    (!id.contains('/') && !id.is_empty()).then_some((id, path))
}

async fn copy(c: &Client, from: &str, to: &str) -> Result<()> {
    match (remote(from), remote(to)) {
        (Some((id, path)), None) => {
            let bytes = c.read_file(id, path).await?;
            std::fs::write(to, bytes).with_context(|| format!("write {to}"))?;
        }
        (None, Some((id, path))) => {
            let bytes = std::fs::read(from).with_context(|| format!("read {from}"))?;
            c.write_file(id, path, bytes).await?;
        }
        _ => bail!("exactly one side must be SANDBOX:PATH"),
    }
    Ok(())
}

fn setup(data_dir: &Path, debian: bool, mirror: Option<&str>, pool: Option<u64>) -> Result<()> {
    let total = if debian {
        3 + sandstone_volumes::BuiltTemplate::ALL.len()
    } else {
        3
    };
    let step = |n: u32, what: &str| eprintln!("[{n}/{total}] {what}");
    step(1, "checking the kernel (user namespaces, overlay)");
    if !Path::new("/proc/self/ns/user").exists() {
        bail!("this kernel has no user namespaces");
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems.contains("overlay") {
        bail!("this kernel has no overlayfs");
    }
    step(
        2,
        &format!("preparing {} and its storage pool", data_dir.display()),
    );
    for t in sandstone_volumes::secure_data_dir(data_dir)? {
        eprintln!(
            "      tightened {} from {:o} to {:o}: other users could read it",
            t.path.display(),
            t.from,
            t.to
        );
    }
    if pool.is_some() {
        ensure_package("mkfs.btrfs", "btrfs-progs")?;
    }
    let storage = sandstone_server::setup_storage(data_dir, pool)?;
    eprintln!(
        "      pool: {} at {}",
        storage.pool.driver.name(),
        storage.pool.root.display()
    );
    eprintln!(
        "      sandbox networks: {} (default-deny egress; `serve --no-network` turns it off)",
        sandstone_server::netpool::recorded_or_choose(data_dir)?
    );
    step(3, "building the host template");
    storage.templates()?;
    if debian {
        for (n, t) in (4..).zip(sandstone_volumes::BuiltTemplate::ALL) {
            if storage.has_built(t) {
                step(n, &format!("{} template: already built", t.id()));
                continue;
            }
            step(
                n,
                &format!(
                    "building the {} template ({}; debootstrap, about 90 s)",
                    t.id(),
                    t.description()
                ),
            );
            ensure_package("debootstrap", "debootstrap")?;
            let started = std::time::Instant::now();
            // A live progress line on a terminal; a log (CI) gets the total.
            let live = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let mut lines = 0;
            storage.build_template(t, mirror, |line| {
                lines += 1;
                if live {
                    eprint!(
                        "\r      {:>4} steps, {:>3} s  {:<60.60}",
                        lines,
                        started.elapsed().as_secs(),
                        line
                    );
                }
            })?;
            if live {
                eprintln!();
            }
            eprintln!(
                "      {} template built: {lines} steps in {} s",
                t.id(),
                started.elapsed().as_secs()
            );
        }
    }
    for t in storage.templates()? {
        eprintln!("      template {:<8} ready", t.id);
    }
    eprintln!(
        "done: start the daemon with `sandstone serve --data-dir {}`",
        data_dir.display()
    );
    Ok(())
}

fn ensure_package(command: &str, package: &str) -> Result<()> {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {command}"))
        .output()?;
    if found.status.success() {
        return Ok(());
    }
    eprintln!("      installing {package} (apt-get)");
    let ok = std::process::Command::new("apt-get")
        .args(["install", "-y", "-qq", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?
        .success();
    if !ok {
        bail!("could not install {package}; install it and run setup again");
    }
    Ok(())
}
