//! `sandstone serve`: the daemon. Composes the metadata database, the
//! volumes and the runtime in [`lifecycle`] (which speaks no HTTP) behind
//! the REST API in `routes` (Sandbox0-compatible, under `/api/v1`).

mod cloud;
mod cluster;
mod console;
mod extract;
mod forward;
mod gzip;
mod initclient;
mod keys;
mod lease;
mod lifecycle;
mod limits;
mod metrics;
pub mod netpool;
mod openapi;
mod preview;
mod routes;
mod sandbox_metrics;
mod ssh_gateway;
pub mod webhooks;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::serve::ListenerExt;
use openapi::Body;
use routes::error::{self, ApiError};
use sandstone_db::{Location, Store};
use sandstone_volumes::Storage;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use lifecycle::random_hex;

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// The metadata database when it is PostgreSQL (shown without its
    /// password); `None`: SQLite in the data directory.
    pub database_url: Option<sandstone_db::PgUrl>,
    pub listen: SocketAddr,
    /// The static `sandstone-init` binary.
    pub init_bin: PathBuf,
    /// Force a storage pool driver; `None` uses btrfs when a pool exists.
    pub pool: Option<sandstone_volumes::Driver>,
    /// Pre-made sandboxes kept per template (0 disables the warm pool).
    pub warm_pool: usize,
    /// Private IPv4 pool for sandbox subnets (e.g. `10.200.0.0/14`): gives
    /// every sandbox a veth behind the host firewall. `None`: only `lo`.
    pub egress_pool: Option<String>,
    /// Resolver the policy DNS forwards allowed questions to (default: the
    /// host's first nameserver).
    pub dns_upstream: Option<std::net::SocketAddr>,
    /// How long egress audit records are kept.
    pub audit_retention: std::time::Duration,
    /// The operator's egress rules file (see `lifecycle::OperatorConfig`).
    pub egress_config: Option<PathBuf>,
    /// Logins for the registries templates are pulled from.
    pub registry_auths: sandstone_registry::Auths,
    /// The Managed Agents control plane under `/v1`.
    pub agents: sandstone_agents::Config,
    /// The template `cloud` environments' sessions start from.
    pub cloud_template: String,
    /// This node's id; `None`: the one recorded in the data directory
    /// (`node.id`, made once).
    pub node_id: Option<String>,
    /// Where other nodes reach this one; `None`: `http://<listen>`.
    pub advertise_url: Option<String>,
    /// How long this node's announcement holds (renewed every third).
    pub node_lease_ttl: std::time::Duration,
    /// Sandboxes this node runs at once, for placement; `None`: one per
    /// 256 MiB of memory.
    pub capacity: Option<i64>,
    /// Where volumes are checkpointed (`s3://bucket/prefix`, with the
    /// endpoint, region and credentials from the AWS variables, or
    /// `file:///path`); `None`: no checkpoints.
    pub object_store: Option<String>,
    /// How often running sandboxes are checkpointed too (`None`: only on
    /// pause and on request).
    pub checkpoint_interval: Option<std::time::Duration>,
    /// The object store collector's grace period (and round interval).
    pub gc_grace: std::time::Duration,
    /// How webhook deliveries are attempted and retried.
    pub webhooks: webhooks::Settings,
    /// The most each sandbox's durable output log holds (0: none).
    pub log_retention_bytes: u64,
    /// Where CRIU is unpacked (`sandstone setup` puts it in the data
    /// directory's `criu`): a pause with memory writes it to disk. Without
    /// it, that memory stays frozen in place.
    pub criu: Option<PathBuf>,
    /// Where previews and public services are served:
    /// `scheme://*.domain[:port]`; `None`: `http://*.localhost:<port>` on
    /// the listen port (browsers and curl take `*.localhost` as loopback).
    pub exposure_origin: Option<String>,
    /// How often each running sandbox's CPU, memory, processes, disk and
    /// egress bytes are sampled for `GET .../metrics` and `/metrics`.
    pub metrics_interval: std::time::Duration,
    /// Where the SSH gateway listens ([`ssh_gateway`]); `None`: no gateway.
    pub ssh_listen: Option<SocketAddr>,
}

#[derive(Clone)]
pub struct AppState {
    lifecycle: Arc<lifecycle::Lifecycle>,
    metrics: Arc<metrics::Metrics>,
    /// Seals credential values with the key kept outside the database.
    sealer: Arc<sandstone_db::secrets::Sealer>,
    /// This node among the others sharing its database.
    cluster: Arc<cluster::Cluster>,
    /// The hash of this process's own API key, which the in-process
    /// `cloud` workers call it with (made at start, never stored).
    own_key: Arc<String>,
    keys: Arc<keys::Keys>,
    /// Previews and public services of this node's sandboxes.
    previews: Arc<preview::Previews>,
    /// The running sandboxes' sampled runtime metrics.
    sandbox_metrics: Arc<sandbox_metrics::SandboxMetrics>,
    /// The public keys the SSH gateway lets in.
    ssh_keys: Arc<dyn sandstone_db::ssh_keys::SshKeyStore>,
}

/// Who a request acts for: every request past authentication has one.
#[derive(Clone)]
pub(crate) struct Caller {
    /// The team whose objects it sees and makes.
    pub team: String,
    /// The key it came with; absent for the daemon's own key and for calls
    /// another node forwarded.
    pub key: Option<sandstone_db::ApiKeyRow>,
}

impl Caller {
    /// Whether it acts across teams (makes teams, and keys in any team):
    /// the daemon itself, and the admin keys of the default team, the
    /// installation's owners (the first start's key among them).
    pub fn owns_installation(&self) -> bool {
        self.key.as_ref().is_none_or(|k| {
            k.team_id == sandstone_db::DEFAULT_TEAM && k.role == sandstone_api::auth::Role::Admin
        })
    }
}

/// The team a call acts for, when the daemon's own key or another node
/// makes it (the auth layer sets it on every call it lets in, so a
/// forwarded call keeps its caller's team; a caller's own is replaced).
pub(crate) const TEAM_HEADER: &str = "x-sandstone-team";

/// A trusted call's team: [`TEAM_HEADER`], else the default team.
fn stated_team(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(TEAM_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .unwrap_or(sandstone_db::DEFAULT_TEAM)
        .to_string()
}

/// Largest JSON body.
pub(crate) const MAX_JSON_BODY: usize = 4 << 20;

pub const ADMIN_TOKEN_FILE: &str = "admin.token";

async fn auth(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let headers = req.headers();
    // Another node forwarding a call it authenticated (the caller's key
    // stayed there).
    if st.cluster.forwarder.is_node(headers) {
        let team = stated_team(headers);
        req.extensions_mut().insert(Caller { team, key: None });
        return next.run(req).await;
    }
    let Some(token) =
        sandstone_api::auth::api_key(|name| headers.get(name).and_then(|v| v.to_str().ok()))
    else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token",
        )
        .into_response();
    };
    if sandstone_db::token_hash(token) == *st.own_key {
        let team = stated_team(headers);
        req.extensions_mut().insert(Caller { team, key: None });
        return next.run(req).await;
    }
    let key = match st.keys.verify(token).await {
        Ok(k) => k,
        Err(keys::KeyError::Db(e)) => return ApiError::internal(e.to_string()).into_response(),
        Err(e) => {
            // The record names the key by a prefix of its hash, never by
            // the key.
            let hash = sandstone_db::token_hash(token);
            tracing::warn!(target: "sandstone::audit", key_hash = &hash[..12], reason = %e,
                method = %req.method(), path = req.uri().path(), "API key refused");
            return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
                .into_response();
        }
    };
    let action = keys::action(req.method(), req.uri().path());
    let caller = Caller {
        team: key.team_id.clone(),
        key: Some(key.clone()),
    };
    // Nodes are the installation's: a team's own admin does not drain them.
    let refusal = if !key.role.may(action) {
        Some(format!("this API key's role ({}) may not", key.role))
    } else if action == sandstone_api::auth::Action::ManageNodes && !caller.owns_installation() {
        Some("only the installation's admins (admin keys of the default team) may".to_string())
    } else {
        None
    };
    if let Some(why) = refusal {
        tracing::warn!(target: "sandstone::audit", key = %key.id, role = %key.role,
            method = %req.method(), path = req.uri().path(), "request refused by the key's role");
        let msg = format!("{why} {} {}", req.method(), req.uri().path());
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", msg).into_response();
    }
    // A caller's own statement of a team counts for nothing.
    req.headers_mut().remove(TEAM_HEADER);
    if let Ok(team) = axum::http::HeaderValue::from_str(&key.team_id) {
        req.headers_mut().insert(TEAM_HEADER, team);
    }
    req.extensions_mut().insert(caller);
    req.extensions_mut().insert(st.keys.life(&key));
    let response = next.run(req).await;
    // A followed stream outlives the check above: it ends once the key
    // stops letting requests in.
    let follows = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.starts_with("text/event-stream") || t.starts_with("application/x-ndjson")
        });
    if !follows {
        return response;
    }
    let revoked = st.keys.clone().revoked(Some(key));
    let (parts, body) = response.into_parts();
    let body = futures_util::StreamExt::take_until(body.into_data_stream(), revoked);
    Response::from_parts(parts, axum::body::Body::from_stream(body))
}

/// The daemon's gauges and latencies are the node's; the per-sandbox
/// egress counters name sandboxes, so a key sees its team's only (the
/// installation's admins see every sandbox's).
async fn metrics_page(
    State(st): State<AppState>,
    axum::Extension(by): axum::Extension<Caller>,
) -> Response {
    let rows = st
        .lifecycle
        .store
        .list_sandboxes()
        .await
        .unwrap_or_default();
    let all = by.owns_installation();
    let mine: std::collections::HashSet<&str> = rows
        .iter()
        .filter(|r| r.team_id == by.team)
        .map(|r| r.id.as_str())
        .collect();
    let body = st.metrics.render(
        st.lifecycle.running_count(),
        rows.len(),
        st.lifecycle.warm_count(),
    ) + &st.lifecycle.egress_metrics(|id| all || mine.contains(id))
        + &st
            .sandbox_metrics
            .render(|id| (all || mine.contains(id)) && st.lifecycle.runs(id));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// A probe's answer, in Sandbox0's `SuccessHealthResponse` shape.
async fn probe(status: &'static str) -> Response {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    error::ok(
        StatusCode::OK,
        sandstone_api::Health {
            status: status.into(),
            timestamp: now,
        },
    )
}

pub fn router(st: AppState) -> Router {
    let ops = openapi::operations();
    // Built and serialised on the first request, then shared: the
    // operations do not change while the daemon runs, and as `Bytes` every
    // request (and every copy of the router a connection holds) shares one
    // copy instead of cloning the whole document.
    let document = Arc::new(std::sync::OnceLock::new());
    let json_limit = DefaultBodyLimit::max(MAX_JSON_BODY);
    let mut api = Router::new();
    for op in ops {
        let route = match op.body {
            // An upload streams to init in pieces, bounded by the
            // sandbox's disk cap, not by the daemon's memory.
            Body::Bytes => op.route,
            Body::Json | Body::None => op.route.layer(json_limit),
        };
        api = api.route(op.path, route);
    }
    let api = api
        // Its egress counters are labelled with sandbox ids.
        .route("/metrics", get(metrics_page))
        // Layers run outermost last-added: authentication, then the
        // hand-off to the node that serves the call.
        .route_layer(middleware::from_fn_with_state(
            st.clone(),
            routes::cluster::to_owner,
        ))
        .route_layer(middleware::from_fn_with_state(st.clone(), auth));
    Router::new()
        .route("/healthz", get(|| probe("ok")))
        .route("/readyz", get(|| probe("ready")))
        .route("/", get(console::page))
        .route("/console/{file}", get(console::file))
        .route(
            "/openapi.json",
            get(move || async move {
                let document = document.get_or_init(|| {
                    axum::body::Bytes::from(openapi::document(&openapi::operations()).to_string())
                });
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    document.clone(),
                )
            }),
        )
        // The registry's own logins (basic auth), not the API's.
        .route("/v2", any(routes::registry::v2))
        .route("/v2/", any(routes::registry::v2))
        .route("/v2/{*rest}", any(routes::registry::v2))
        .merge(api)
        .fallback(not_found)
        .with_state(st)
}

/// The names the daemon's own registry answers to: the advertised URL's
/// `host:port` first (what pushers are told), then the listen address and,
/// on loopback or all addresses, `localhost` and `127.0.0.1` with its port.
fn registry_hosts(advertise_url: &str, listen: SocketAddr) -> Vec<String> {
    let mut hosts = Vec::new();
    let (default_port, rest) = match advertise_url.split_once("://") {
        Some(("https", rest)) => (443, rest),
        Some((_, rest)) => (80, rest),
        None => (listen.port(), advertise_url),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if !authority.is_empty() {
        // `[v6]:port`, `host:port`, or a host with the scheme's port.
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.ends_with(':') && p.parse::<u16>().is_ok());
        hosts.push(if has_port {
            authority.to_string()
        } else {
            format!("{authority}:{default_port}")
        });
    }
    let port = listen.port();
    hosts.push(listen.to_string());
    if listen.ip().is_loopback() || listen.ip().is_unspecified() {
        hosts.push(format!("localhost:{port}"));
        hosts.push(format!("127.0.0.1:{port}"));
    }
    hosts.dedup();
    hosts
}

/// Writes `bytes` to a new file only root may read (0600 from its
/// creation, never briefly readable), synced, for the caller to rename into
/// place.
pub(crate) fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The object store at `url`, checked now (a wrong bucket, endpoint or
/// credentials stop the start with the reason), with the checkpoint key
/// derived from the sealing key: every node sharing that key reads every
/// checkpoint, and the key is in neither the database nor the bucket.
async fn open_checkpoints(
    url: &str,
    sealer: &sandstone_db::secrets::Sealer,
    data_dir: &std::path::Path,
    gc_grace: std::time::Duration,
) -> anyhow::Result<sandstone_checkpoint::Checkpoints> {
    use sandstone_checkpoint as ckpt;
    let blobs = ckpt::store::open(url, ckpt::store::S3Options::default())
        .map_err(|e| anyhow::anyhow!("--object-store: {e}"))?;
    let key = ckpt::MasterKey::from_bytes(sealer.derive("sandstone checkpoint master key v1"));
    let options = ckpt::Options {
        gc_grace,
        ..ckpt::Options::new(data_dir.join("checkpoints"))
    };
    let store = ckpt::Checkpoints::open(blobs, &key, options)
        .await
        .map_err(|e| anyhow::anyhow!("--object-store: {e}"))?;
    tracing::info!(store = %url, "object store open: volumes are checkpointed on pause");
    Ok(store)
}

/// This data directory's node id: read from `node.id`, made once as
/// `node-<12 hex>` (so a restart is the same node and re-adopts its
/// sandboxes).
fn node_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("node.id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::anyhow!("read {}: {e}", path.display())),
    }
    let id = format!("node-{}", random_hex(6));
    let tmp = data_dir.join(".node.id.tmp");
    write_private(&tmp, id.as_bytes())?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

/// Creates the admin key on first start and writes it (0600) for the CLI.
async fn ensure_admin_token(store: &dyn Store, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if store.count_api_keys().await? > 0 && path.exists() {
        return Ok(());
    }
    let token = format!("s0_local_{}", random_hex(24));
    let tmp = data_dir.join(".admin.token.tmp");
    write_private(&tmp, token.as_bytes())?;
    let now = sandstone_api::timefmt::now_us() / 1000;
    store
        .insert_api_key(&sandstone_db::ApiKeyRow {
            id: format!("key_{}", random_hex(8)),
            token_hash: sandstone_db::token_hash(&token),
            name: "admin".into(),
            role: sandstone_api::auth::Role::Admin,
            expires_at: None,
            active: true,
            created_by: "sandstone".into(),
            created_at: now,
            updated_at: now,
            last_used_at: None,
            usage_count: 0,
            team_id: sandstone_db::DEFAULT_TEAM.into(),
        })
        .await?;
    std::fs::rename(&tmp, &path)?;
    tracing::info!(path = %path.display(), "created admin API key");
    Ok(())
}

/// Runs the daemon until SIGINT or SIGTERM. Sandboxes keep running after
/// the daemon stops; the next start re-adopts them.
pub async fn run(mut config: Config) -> anyhow::Result<()> {
    raise_fd_limit();
    for t in sandstone_volumes::secure_data_dir(&config.data_dir)? {
        tracing::warn!(path = %t.path.display(), from = format!("{:o}", t.from), to = format!("{:o}", t.to),
            "tightened a mode in the data directory: other users could read it");
    }
    // One spelling whatever the command line said (`dir/`, a relative path,
    // a link): the cgroup group is named after it, and a restart must find
    // the last run's sandboxes there to re-adopt or sweep them.
    config.data_dir = std::fs::canonicalize(&config.data_dir)?;
    if !config.init_bin.is_file() {
        anyhow::bail!(
            "sandstone-init not found at {} (set SANDSTONE_INIT)",
            config.init_bin.display()
        );
    }
    let location = match &config.database_url {
        Some(url) => Location::Postgres(url.clone()),
        None => Location::Sqlite(config.data_dir.join("sandstone.db")),
    };
    let db = location.open().await?;
    tracing::info!(database = %location, "metadata database open");
    let store: Arc<dyn Store> = db.clone();
    ensure_admin_token(store.as_ref(), &config.data_dir).await?;
    let storage = Storage::open(&config.data_dir, config.pool)?;
    match storage.pool.driver {
        sandstone_volumes::Driver::Btrfs => {
            tracing::info!(pool = %storage.pool.root.display(), "storage pool: btrfs (O(1) snapshots, disk caps)")
        }
        sandstone_volumes::Driver::Dir => tracing::warn!(
            "storage pool: dir driver (snapshots and forks copy files, no disk caps); run `sandstone setup` for a btrfs pool"
        ),
    }
    // Build missing templates now, not inside the first create.
    storage.templates()?;
    let group = format!(
        "sandstone-{}",
        &sandstone_db::token_hash(&config.data_dir.display().to_string())[..8]
    );
    let sealer = Arc::new(sandstone_db::secrets::Sealer::load(
        &config.data_dir.join("secret.key"),
    )?);
    let operator = match &config.egress_config {
        Some(path) => lifecycle::OperatorConfig::load(path)?,
        None => lifecycle::OperatorConfig::default(),
    };
    let webhook_outbound = operator.callers_outbound(config.egress_pool.as_deref())?;
    // The control plane's own calls (MCP servers, token endpoints) are
    // bound by what the operator wrote, when they wrote something.
    let agents_outbound = match &config.egress_config {
        Some(_) => Some(operator.outbound()?),
        None => None,
    };
    let network = match &config.egress_pool {
        Some(pool) => {
            let upstream_dns = config
                .dns_upstream
                .or_else(lifecycle::host_resolver)
                .ok_or_else(|| anyhow::anyhow!("no DNS upstream: set --dns-upstream"))?;
            let options = lifecycle::NetworkOptions {
                pool,
                group: &group,
                upstream_dns,
                ca_dir: &config.data_dir.join("ca"),
                operator,
            };
            Some(
                lifecycle::Network::start(options, store.clone(), db.clone(), sealer.clone())
                    .await?,
            )
        }
        None => None,
    };
    let node = cluster::NodeConfig {
        id: match &config.node_id {
            Some(id) => id.clone(),
            None => node_id(&config.data_dir)?,
        },
        advertise_url: config
            .advertise_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", config.listen)),
        lease_ttl: config.node_lease_ttl,
        capacity: config.capacity.unwrap_or_else(cluster::default_capacity),
    };
    let checkpoints = match &config.object_store {
        Some(url) => Some(open_checkpoints(url, &sealer, &config.data_dir, config.gc_grace).await?),
        None => None,
    };
    // Only a shared database has other nodes that may take this one's
    // sandboxes: then its hold on them is a lease it must keep renewing.
    let lease = match location {
        Location::Postgres(_) => lease::Lease::shared(
            node.lease_ttl,
            config.data_dir.join("lease-watch").join("deadline"),
        )?,
        Location::Sqlite(_) => lease::Lease::sole(),
    };
    let runner = lifecycle::Runner {
        node: node.id.clone(),
        init_bin: config.init_bin.clone(),
        cgroup_group: &group,
        warm_pool: config.warm_pool,
        lease: Arc::new(lease),
        registry_auths: config.registry_auths.clone(),
        registry_hosts: registry_hosts(&node.advertise_url, config.listen),
        webhooks: Arc::new(webhooks::Webhooks::new(
            db.clone(),
            sealer.clone(),
            node.id.clone(),
            config.webhooks.clone(),
            webhook_outbound,
        )?),
        log_bytes: config.log_retention_bytes,
        criu: criu(&config),
    };
    let lc =
        lifecycle::Lifecycle::new(runner, store, db.clone(), storage, network, checkpoints).await?;
    lc.adopt().await?;
    lc.sweep_volumes().await?;
    let lc = Arc::new(lc);
    lc.spawn_volume_helper_reaper();
    let cluster = Arc::new(cluster::Cluster::new(
        node,
        lc.store.clone(),
        &sealer.derive(forward::NODE_KEY_CONTEXT),
    ));
    cluster.announce(&lc).await?;
    tracing::info!(node = %cluster.me.id, url = %cluster.me.advertise_url, "node announced");
    cluster.spawn_announcer(lc.clone());
    lc.checkpoint_unsaved();
    cluster.spawn_template_sync(lc.clone());
    cluster.spawn_collector(lc.clone(), config.gc_grace);
    lc.spawn_expiry(config.audit_retention);
    if let Some(every) = config.checkpoint_interval {
        lc.spawn_checkpointer(every);
    }
    lc.spawn_init_watch();
    lc.webhooks.spawn();
    lc.spawn_warm_pool();
    let exposure = preview::Exposure::parse(
        config
            .exposure_origin
            .as_deref()
            .unwrap_or(&format!("http://*.localhost:{}", config.listen.port())),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let own_key = sandstone_api::Secret::new(format!("sst-own-{}", random_hex(32)));
    let st = AppState {
        lifecycle: lc.clone(),
        metrics: Arc::new(metrics::Metrics::default()),
        sealer,
        cluster,
        own_key: Arc::new(sandstone_db::token_hash(own_key.expose())),
        keys: keys::Keys::new(lc.store.clone()),
        previews: Arc::new(preview::Previews::new(lc.clone(), exposure)),
        sandbox_metrics: Arc::new(sandbox_metrics::SandboxMetrics::new(
            config.metrics_interval,
        )),
        ssh_keys: db.clone(),
    };
    if let Some(addr) = config.ssh_listen {
        let gateway = ssh_gateway::Gateway::new(
            &config.data_dir,
            lc.clone(),
            st.keys.clone(),
            st.ssh_keys.clone(),
        )?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(listen = %addr, "SSH gateway ready");
        tokio::spawn(gateway.serve(listener));
    }
    st.sandbox_metrics.spawn(lc.clone());
    st.keys.spawn_flush();
    let keys = st.keys.clone();
    let api_keys: sandstone_agents::ApiKeyCheck = Arc::new(move |token: String| {
        let keys = keys.clone();
        Box::pin(async move {
            keys.verify(&token)
                .await
                .ok()
                .map(|k| sandstone_agents::KeyGrant {
                    role: k.role,
                    team: k.team_id,
                })
        })
    });
    let mut agents_config = config.agents.clone();
    // Claims on driving a session's turn are this node's.
    agents_config.node = st.cluster.me.id.clone();
    agents_config.outbound = agents_outbound;
    let agents =
        sandstone_agents::Agents::start(db, agents_config, api_keys, st.sealer.clone()).await?;
    let node_id = st.cluster.me.id.clone();
    let outer = st.clone();
    let app = router(st)
        .nest("/v1", sandstone_agents::router(agents.clone()))
        .layer(middleware::from_fn(gzip::json))
        // Outermost: a preview's or service's host name never reaches the
        // API, its authentication or its compression.
        .layer(middleware::from_fn_with_state(outer, preview::by_host));
    // Event streams write small frames: without TCP_NODELAY one can wait
    // for the peer's delayed ACK (40 ms) behind the frame before it.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await?
        .tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
        });
    // `cloud` sessions are served in-process, through this listener.
    let mut own = axum::serve::Listener::local_addr(&listener)?;
    if own.ip().is_unspecified() {
        own.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let executor = cloud::Cloud::new(
        lc.clone(),
        &agents,
        cloud::CloudSettings {
            self_url: format!("http://{own}"),
            key: own_key,
            base: config.cloud_template.clone(),
            node: node_id,
        },
    );
    let cloud = executor.clone();
    tokio::spawn(async move { agents.serve_cloud(executor).await });
    tracing::info!(listen = %config.listen, data_dir = %config.data_dir.display(), "sandstone daemon ready");
    // Previews and services tell a sandbox's server who connected.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            cloud.shut_down();
        })
        .await?;
    lc.shutdown();
    Ok(())
}

/// Locks a mutex of maps that change by single inserts and removes: a
/// panic while one was held cannot have left it half-changed, so a
/// poisoned one is a bug to stop at, not a state to recover.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("lock poisoned: a holder panicked")
}

/// Checks a `--exposure-origin` (`scheme://*.domain[:port]`).
pub fn check_exposure_origin(origin: &str) -> Result<(), String> {
    preview::Exposure::parse(origin).map(|_| ())
}

/// Every sandbox connection through the proxy costs descriptors: use all
/// the host allows (root here cannot go past the hard limit).
fn raise_fd_limit() {
    use sandstone_sys::security::{getrlimit, setrlimit};
    // Best effort: the daemon still serves at the lower limit.
    if let Ok((soft, hard)) = getrlimit(libc::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(libc::RLIMIT_NOFILE, hard, hard);
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down; sandboxes keep running");
}

/// Prepares the on-disk storage for `sandstone setup`: with `pool_size`,
/// the btrfs pool (a sparse image of that many bytes unless the data dir
/// is on btrfs already).
pub fn setup_storage(
    data_dir: &std::path::Path,
    pool_size: Option<u64>,
) -> anyhow::Result<Storage> {
    if let Some(size) = pool_size {
        sandstone_volumes::Pool::create(data_dir, size)?;
    }
    sandstone_egress::ca::InstallationCa::load_or_create(&data_dir.join("ca"))
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(Storage::open(data_dir, None)?)
}

/// The CRIU a pause with memory writes to disk with: `--criu`, else the
/// one `sandstone setup` unpacked in the data directory.
fn criu(config: &Config) -> Option<sandstone_runtime::criu::Criu> {
    let root = config
        .criu
        .clone()
        .unwrap_or_else(|| config.data_dir.join("criu"));
    let found = sandstone_runtime::criu::Criu::at(&root);
    match (&found, &config.criu) {
        (Some(_), _) => {
            tracing::info!(criu = %root.display(), "pauses with memory write it to disk")
        }
        (None, Some(_)) => {
            tracing::warn!(criu = %root.display(), "no CRIU there: pauses with memory keep it frozen in place")
        }
        (None, None) => tracing::info!(
            "no CRIU (`sandstone setup` unpacks it): pauses with memory keep it frozen in place"
        ),
    }
    found
}
