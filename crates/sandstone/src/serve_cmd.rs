//! `sandstone setup` (prepare the host) and `sandstone serve` (run the
//! daemon).

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct SetupArgs {
    /// Skip the `default` and `debian` templates (debootstrap, about
    /// 90 s each, once).
    #[arg(long)]
    pub no_debian: bool,
    /// Debian mirror for debootstrap.
    #[arg(long, env = "SANDSTONE_DEBIAN_MIRROR")]
    pub mirror: Option<String>,
    /// Size of the btrfs pool image (sparse; only used when the data
    /// directory is not on btrfs already), in GiB.
    #[arg(long, default_value_t = 64)]
    pub pool_gib: u64,
    /// Keep the plain-directory pool (no btrfs).
    #[arg(long)]
    pub no_pool: bool,
    /// Skip unpacking CRIU (Debian's package, about 10 MB, once): pauses
    /// with memory then keep it frozen in place instead of on disk.
    #[arg(long)]
    pub no_criu: bool,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    #[arg(long, env = "SANDSTONE_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: std::net::SocketAddr,
    /// Keep the metadata (sandboxes, snapshots, credentials, audit, API
    /// keys, Managed Agents) in PostgreSQL: postgres://user:password@host:port/db.
    /// Default: SQLite in the data directory. Prefer the variable (or
    /// PGPASSWORD) to the flag: a command line is visible to every local user.
    // Parsed in `serve`, not by clap: clap's errors and `--help` would show
    // the value, password included.
    #[arg(long, env = "SANDSTONE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Storage pool driver: btrfs or dir (default: btrfs when set up).
    #[arg(long, env = "SANDSTONE_POOL")]
    pub pool: Option<PoolArg>,
    /// The template `cloud` environments' sessions start from, and their
    /// package sets are built on.
    #[arg(long, env = "SANDSTONE_CLOUD_TEMPLATE", default_value = "default")]
    pub cloud_template: String,
    /// Sandboxes kept ready per template, so a claim is a handoff.
    #[arg(long, env = "SANDSTONE_WARM_POOL", default_value_t = 2)]
    pub warm_pool: usize,
    /// The private IPv4 pool sandboxes' subnets come from (e.g.
    /// 10.200.0.0/14). Default: the one `sandstone setup` chose and
    /// recorded in the data directory (chosen now if there is none).
    #[arg(long, env = "SANDSTONE_EGRESS_POOL")]
    pub egress_pool: Option<String>,
    /// Give sandboxes only loopback (no interface, no egress proxy).
    #[arg(long, env = "SANDSTONE_NO_NETWORK", conflicts_with = "egress_pool")]
    pub no_network: bool,
    /// Resolver (ip:port) the policy DNS forwards allowed names to
    /// (default: the host's first nameserver).
    #[arg(long, env = "SANDSTONE_DNS_UPSTREAM")]
    pub dns_upstream: Option<std::net::SocketAddr>,
    /// Days egress audit records are kept.
    #[arg(long, env = "SANDSTONE_AUDIT_RETENTION_DAYS", default_value_t = 7)]
    pub audit_retention_days: u64,
    /// Operator egress rules (JSON: allow, deny, denyDomains,
    /// upstreamCaFiles), applied before any sandbox's policy.
    #[arg(long, env = "SANDSTONE_EGRESS_CONFIG")]
    pub egress_config: Option<PathBuf>,
    /// Logins for the registries templates are pulled from: a Docker
    /// `config.json` (its `auths`).
    #[arg(long, env = "SANDSTONE_REGISTRY_AUTH")]
    pub registry_auth: Option<PathBuf>,
    /// Messages API the Managed Agents loop calls (its key comes from
    /// SANDSTONE_MODEL_API_KEY, never from the command line).
    #[arg(
        long,
        env = "SANDSTONE_MODEL_BASE_URL",
        default_value = "https://api.anthropic.com"
    )]
    pub model_base_url: String,
    /// A file holding the Messages API key (instead of the variable).
    #[arg(long, env = "SANDSTONE_MODEL_API_KEY_FILE")]
    pub model_api_key_file: Option<PathBuf>,
    /// Seconds a Managed Agents work item's lease lasts between heartbeats.
    #[arg(long, env = "SANDSTONE_LEASE_TTL_SECONDS", default_value_t = 300)]
    pub lease_ttl_seconds: u64,
    /// This node's id among the nodes sharing the database (default: the
    /// one recorded in the data directory, made once).
    #[arg(long, env = "SANDSTONE_NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<String>,
    /// The URL other nodes reach this node's API at (default:
    /// http://<listen>; set it when listening on 0.0.0.0).
    #[arg(long, env = "SANDSTONE_ADVERTISE_URL", value_parser = parse_advertise_url)]
    pub advertise_url: Option<String>,
    /// Seconds this node's lease lasts (renewed every third): after it
    /// lapses the other nodes treat the node as gone.
    #[arg(long, env = "SANDSTONE_NODE_LEASE_TTL", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub node_lease_ttl: u64,
    /// Sandboxes this node runs at once, for placement (default: one per
    /// 256 MiB of memory).
    #[arg(long, env = "SANDSTONE_CAPACITY", value_parser = clap::value_parser!(i64).range(1..))]
    pub capacity: Option<i64>,
    /// Checkpoint volumes to this object store when sandboxes pause (and on
    /// POST …/checkpoint), so any node can resume them: s3://bucket/prefix
    /// (endpoint, region and credentials from AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or file:///path.
    #[arg(long, env = "SANDSTONE_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// Also checkpoint every running sandbox this often (seconds; needs
    /// --object-store): what a sandbox lost with its node resumes from.
    /// Unchanged files are not read again. Default: only on pause and on
    /// request.
    #[arg(long, env = "SANDSTONE_CHECKPOINT_INTERVAL", requires = "object_store", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub checkpoint_interval: Option<u64>,
    /// The object store's garbage collector: a pack no checkpoint names is
    /// marked, and deleted this many seconds later if still unnamed; the
    /// first live node by id runs a round this often. Longer than any
    /// checkpoint takes, and the same on every node.
    #[arg(long, env = "SANDSTONE_GC_GRACE", default_value_t = 3600, requires = "object_store", value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub gc_grace: u64,
    /// Webhook deliveries: one attempt's time limit, in milliseconds.
    #[arg(long, env = "SANDSTONE_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=300_000))]
    pub webhook_timeout_ms: u64,
    /// Webhook deliveries: the wait after a first failed attempt, in
    /// milliseconds; it doubles with each failure, up to an hour.
    #[arg(long, env = "SANDSTONE_WEBHOOK_RETRY_BASE_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub webhook_retry_base_ms: u64,
    /// Webhook deliveries: no retry starts later than this many seconds
    /// after the event (Sandbox0's 24 hours by default).
    #[arg(long, env = "SANDSTONE_WEBHOOK_GIVE_UP_SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub webhook_give_up_secs: u64,
    /// The most each sandbox's durable output log holds, in bytes: every
    /// context's output, kept across pauses and restarts, the oldest
    /// dropped first (`GET .../observability/logs`, `sandstone logs`).
    /// 0 keeps none.
    #[arg(long, env = "SANDSTONE_LOG_RETENTION_BYTES", default_value_t = 64 << 20)]
    pub log_retention_bytes: u64,
    /// Where CRIU is unpacked (default: the data directory's `criu`,
    /// which `sandstone setup` fills): a pause with memory writes the
    /// processes to disk with it. Without one, it keeps them frozen in place.
    #[arg(long, env = "SANDSTONE_CRIU")]
    pub criu: Option<PathBuf>,
    /// Where previews and public services are served, as
    /// `scheme://*.domain[:port]` (the `*` is a preview's or service's own
    /// name; point a wildcard DNS record or a TLS proxy at this daemon).
    /// Default: `http://*.localhost:<listen port>`.
    #[arg(long, env = "SANDSTONE_EXPOSURE_ORIGIN", value_parser = parse_exposure_origin)]
    pub exposure_origin: Option<String>,
    /// How often each running sandbox's CPU, memory, processes, disk and
    /// egress bytes are sampled, in seconds (`GET …/metrics`, `/metrics`).
    /// Each sandbox keeps its last 360 samples, an hour at the default.
    #[arg(long, env = "SANDSTONE_METRICS_INTERVAL", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub metrics_interval: u64,
    /// Serve SSH here (e.g. `0.0.0.0:2222`): `ssh <sandbox-id>@host` opens
    /// a shell, runs a command or serves SFTP in that sandbox, for the
    /// public keys registered through `/users/me/ssh-keys`. Off by default.
    #[arg(long, env = "SANDSTONE_SSH_LISTEN")]
    pub ssh_listen: Option<std::net::SocketAddr>,
}

fn parse_exposure_origin(s: &str) -> Result<String, String> {
    sandstone_server::check_exposure_origin(s).map(|()| s.to_string())
}

/// 1 to 64 of `[A-Za-z0-9._-]`: it goes into a header and the logs.
fn parse_node_id(s: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    ok.then(|| s.to_string())
        .ok_or_else(|| "1 to 64 letters, digits, '.', '_' or '-'".into())
}

/// An `http://host:port` base (no path, query or credentials).
fn parse_advertise_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("http://")
        .ok_or("must start with http:// (put TLS in front of the whole cluster)")?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err("must be http://host:port with no path, query or user".into());
    }
    Ok(format!("http://{rest}"))
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PoolArg {
    Btrfs,
    Dir,
}

/// Runs `sandstone setup`.
pub fn setup_cmd(data_dir: &Path, args: &SetupArgs) -> Result<()> {
    let pool = (!args.no_pool).then_some(args.pool_gib << 30);
    setup(data_dir, !args.no_debian, args.mirror.as_deref(), pool)?;
    if !args.no_criu {
        eprintln!("[criu] pauses with memory write it to disk with CRIU");
        // Optional: without it a pause with memory keeps it frozen in place.
        if let Err(e) = crate::criu_setup::unpack(&data_dir.join("criu"), args.mirror.as_deref()) {
            eprintln!(
                "      CRIU not unpacked ({e:#}): pauses with memory will keep it frozen in place"
            );
        }
    }
    eprintln!(
        "done: start the daemon with `sandstone serve --data-dir {}`",
        data_dir.display()
    );
    Ok(())
}

/// Runs the daemon until it is told to stop.
pub async fn serve(data_dir: &Path, args: &ServeArgs) -> Result<()> {
    let model_api_key = match &args.model_api_key_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("read {}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("SANDSTONE_MODEL_API_KEY").ok(),
    };
    let database_url_set = args.database_url.is_some();
    let database_url = match &args.database_url {
        Some(url) => Some(
            url.parse::<sandstone_db::PgUrl>()
                .context("--database-url (SANDSTONE_DATABASE_URL)")?,
        ),
        None => None,
    };
    init_logging(false);
    let config = sandstone_server::Config {
        data_dir: data_dir.to_path_buf(),
        database_url,
        listen: args.listen,
        init_bin: init_binary()?,
        pool: args.pool.map(|p| match p {
            PoolArg::Btrfs => sandstone_volumes::Driver::Btrfs,
            PoolArg::Dir => sandstone_volumes::Driver::Dir,
        }),
        warm_pool: args.warm_pool,
        cloud_template: args.cloud_template.clone(),
        egress_pool: match (args.no_network, &args.egress_pool) {
            (true, _) => None,
            (false, Some(pool)) => Some(pool.clone()),
            (false, None) => {
                std::fs::create_dir_all(data_dir)?;
                Some(sandstone_server::netpool::recorded_or_choose(data_dir)?)
            }
        },
        dns_upstream: args.dns_upstream,
        audit_retention: std::time::Duration::from_secs(
            args.audit_retention_days.saturating_mul(86_400),
        ),
        egress_config: args.egress_config.clone(),
        registry_auths: match &args.registry_auth {
            Some(path) => sandstone_registry::Auths::load(path)?,
            None => sandstone_registry::Auths::default(),
        },
        agents: sandstone_agents::Config {
            model_base_url: args.model_base_url.clone(),
            model_api_key,
            lease_ttl: std::time::Duration::from_secs(args.lease_ttl_seconds),
            max_tokens: 8192,
            outbound: None,
            // The node's id, which `sandstone_server::run` settles (the
            // flag, else the one recorded in the data directory).
            node: String::new(),
        },
        node_id: args.node_id.clone(),
        advertise_url: match &args.advertise_url {
            Some(url) => Some(url.clone()),
            None if args.listen.ip().is_unspecified() && database_url_set => {
                bail!(
                    "--advertise-url is required when listening on {} with a shared database: other nodes must know where to reach this one",
                    args.listen
                )
            }
            None => None,
        },
        node_lease_ttl: std::time::Duration::from_secs(args.node_lease_ttl),
        capacity: args.capacity,
        object_store: args.object_store.clone(),
        checkpoint_interval: args.checkpoint_interval.map(std::time::Duration::from_secs),
        gc_grace: std::time::Duration::from_secs(args.gc_grace),
        webhooks: sandstone_server::webhooks::Settings {
            timeout: std::time::Duration::from_millis(args.webhook_timeout_ms),
            retry_base: std::time::Duration::from_millis(args.webhook_retry_base_ms),
            give_up_after: std::time::Duration::from_secs(args.webhook_give_up_secs),
        },
        exposure_origin: args.exposure_origin.clone(),
        log_retention_bytes: args.log_retention_bytes,
        criu: args.criu.clone(),
        metrics_interval: std::time::Duration::from_secs(args.metrics_interval),
        ssh_listen: args.ssh_listen,
    };
    sandstone_server::run(config).await
}

/// Logs go to stderr; JSON when asked for (`--log-format json` or
/// `SANDSTONE_LOG_FORMAT=json`).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SANDSTONE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        // The SSH library's debug lines dump every packet and the keys'
        // structures: never below warnings, whatever the level asked for.
        .add_directive("russh=warn".parse().expect("a valid directive"));
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
