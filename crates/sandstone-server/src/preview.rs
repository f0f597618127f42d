//! Previews and public services: an HTTP (or WebSocket) server listening
//! on a loopback port inside a sandbox, reached through the daemon at a
//! host name of its own under the exposure domain.
//!
//! - `pv-<16 hex>.<domain>`: a preview grant (`POST .../previews`). Its
//!   URL carries a one-time token; using it sets a cookie for that origin
//!   alone (`HttpOnly; SameSite=Lax`) and redirects to the clean URL. The
//!   grant is bound to the runtime generation it was made in: once the
//!   sandbox is paused or restarted it answers 410 and a new grant is due.
//! - `<service>--<sandbox>.<domain>`: a service declared public
//!   (`PUT .../services`), routed by its routes' prefixes, methods and
//!   auth; a route with `resume` wakes a paused sandbox with `auto_resume`.
//!
//! A name under the domain that is neither answers 404: a port nobody
//! declared or granted is never reachable. Inbound is not egress: the
//! daemon opens the connection inside the sandbox's network namespace, to
//! 127.0.0.1, so the egress firewall and proxy are not involved and the
//! server needs no other address.

use crate::forward::{constant_time_eq, relay, strip_internal};
use crate::lifecycle::{Lifecycle, Runtime};
use crate::lock;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sandstone_api::services::{AppService, AuthMode, Route, canonical_path};
use sandstone_api::timefmt::now_ms;
use sandstone_db::{PreviewRow, token_hash};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Where a grant's one-time token is spent, on the preview's own origin.
pub const BOOTSTRAP_PATH: &str = "/__sandstone/preview";
/// The cookie a spent token leaves (its value is the grant's key).
const COOKIE: &str = "sandstone_preview";
/// How long a grant or a sandbox's services are trusted from the cache
/// (another node may have renewed, revoked or replaced them).
const FRESH: Duration = Duration::from_secs(2);
/// How long a request waits for a resumed sandbox's service to listen,
/// unless its route says otherwise.
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Grants (and names that are none) remembered at once.
const MAX_CACHED_GRANTS: usize = 10_000;

/// The origins previews and services are served at: `scheme://*.domain[:port]`.
#[derive(Debug, Clone)]
pub struct Exposure {
    scheme: String,
    domain: String,
    port: Option<u16>,
}

impl Exposure {
    /// Parses `http://*.localhost:8080`-style origins; the `*` is where a
    /// preview's or service's label goes.
    pub fn parse(origin: &str) -> Result<Exposure, String> {
        let bad = || format!("exposure origin {origin:?}: expected scheme://*.domain[:port]");
        let (scheme, rest) = origin.split_once("://").ok_or_else(bad)?;
        if scheme != "http" && scheme != "https" {
            return Err(bad());
        }
        let rest = rest
            .trim_end_matches('/')
            .strip_prefix("*.")
            .ok_or_else(bad)?;
        let (domain, port) = match rest.rsplit_once(':') {
            Some((d, p)) => (d, Some(p.parse::<u16>().map_err(|_| bad())?)),
            None => (rest, None),
        };
        if domain.is_empty() || domain.contains(['/', '*', '@']) {
            return Err(bad());
        }
        Ok(Exposure {
            scheme: scheme.into(),
            domain: domain.to_ascii_lowercase(),
            port,
        })
    }

    /// The origin of the preview or service named `label`.
    pub fn origin(&self, label: &str) -> String {
        match self.port {
            Some(p) => format!("{}://{label}.{}:{p}", self.scheme, self.domain),
            None => format!("{}://{label}.{}", self.scheme, self.domain),
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The label of a `Host` under the domain (one label, port ignored).
    fn label<'a>(&self, host: &'a str) -> Option<&'a str> {
        let name = match host.rsplit_once(':') {
            Some((n, p)) if p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => host,
        };
        let label = name.strip_suffix(&self.domain)?.strip_suffix('.')?;
        (!label.is_empty() && !label.contains('.')).then_some(label)
    }
}

/// What a label under the exposure domain names.
#[derive(Debug, PartialEq)]
enum Target<'a> {
    Preview(&'a str),
    Service { service: &'a str, sandbox: &'a str },
}

fn target(label: &str) -> Option<Target<'_>> {
    if label.starts_with("pv-") {
        return Some(Target::Preview(label));
    }
    let (service, sandbox) = label.split_once("--")?;
    Some(Target::Service { service, sandbox })
}

/// Dials a loopback port inside a sandbox: the request URI's host is
/// `<init pid>.<sandbox id>`, so the client's pool keeps connections per
/// sandbox, port and runtime (a new generation has a new init).
#[derive(Clone)]
struct Connector {
    lifecycle: Arc<Lifecycle>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<Self::Response>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let lifecycle = self.lifecycle.clone();
        Box::pin(async move {
            let gone = || io::Error::new(io::ErrorKind::NotConnected, "the sandbox is not running");
            let (pid, sandbox) = uri
                .host()
                .and_then(|h| h.split_once('.'))
                .ok_or_else(gone)?;
            let rt = lifecycle
                .runtime(sandbox)
                .filter(|rt| rt.pid.to_string() == pid)
                .ok_or_else(gone)?;
            let stream = connect_in(&rt, uri.port_u16().unwrap_or(80)).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// Connects to `127.0.0.1:port` in the runtime's network namespace. A
/// socket keeps the namespace it was made in, so one short-lived thread
/// enters the namespace (through init's pidfd, never a pid that could be
/// reused), connects and ends; the daemon's own threads never move.
async fn connect_in(rt: &Runtime, port: u16) -> io::Result<tokio::net::TcpStream> {
    let ns: Arc<OwnedFd> = rt.init.clone().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotConnected,
            "no handle on the sandbox's init",
        )
    })?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("preview-dial".into())
        .spawn(move || {
            let dialed = (|| -> io::Result<std::net::TcpStream> {
                sandstone_sys::process::setns(ns.as_fd(), libc::CLONE_NEWNET)?;
                let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
                let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                s.set_nonblocking(true)?;
                s.set_nodelay(true)?;
                Ok(s)
            })();
            let _ = tx.send(dialed);
        })?;
    let stream = rx
        .await
        .map_err(|_| io::Error::other("the dialing thread died"))??;
    tokio::net::TcpStream::from_std(stream)
}

/// The previews and services of this node's sandboxes.
pub struct Previews {
    lifecycle: Arc<Lifecycle>,
    client: Client<Connector, Body>,
    pub exposure: Exposure,
    /// Grants looked up by id, trusted for [`FRESH`] (another node may
    /// have renewed or revoked one); `None`: no such grant, so a flood of
    /// made-up names costs one lookup each per [`FRESH`].
    grants: Mutex<HashMap<String, (Instant, Option<PreviewRow>)>>,
    /// Each sandbox's runtime generation, with the init it was read for.
    generations: Mutex<HashMap<String, (Weak<OwnedFd>, i64)>>,
    services: Mutex<HashMap<String, (Instant, Arc<ServiceConfig>)>>,
}

/// What a public request needs of its sandbox's configuration.
struct ServiceConfig {
    services: Vec<AppService>,
    auto_resume: bool,
}

impl Previews {
    pub fn new(lifecycle: Arc<Lifecycle>, exposure: Exposure) -> Previews {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(Connector {
                lifecycle: lifecycle.clone(),
            });
        Previews {
            lifecycle,
            client,
            exposure,
            grants: Mutex::default(),
            generations: Mutex::default(),
            services: Mutex::default(),
        }
    }

    /// The generation sandbox `id` runs, and its runtime; `None` when it
    /// is not running here.
    pub async fn generation(&self, id: &str) -> crate::lifecycle::Result<Option<(i64, Runtime)>> {
        let Some(rt) = self.lifecycle.runtime(id) else {
            return Ok(None);
        };
        if let Some(init) = &rt.init {
            let cached = lock(&self.generations)
                .get(id)
                .and_then(|(w, g)| w.upgrade().filter(|s| Arc::ptr_eq(s, init)).map(|_| *g));
            if let Some(g) = cached {
                return Ok(Some((g, rt)));
            }
        }
        let found = self.lifecycle.running_generation(id).await?;
        if let Some((g, rt)) = &found
            && let Some(init) = &rt.init
        {
            lock(&self.generations).insert(id.to_string(), (Arc::downgrade(init), *g));
        }
        Ok(found)
    }

    /// Forgets what is cached of a grant (its token was spent, or it was
    /// renewed or revoked here).
    pub fn forget_grant(&self, id: &str) {
        lock(&self.grants).remove(id);
    }

    /// Forgets a sandbox's cached services (they were replaced here).
    pub fn forget_services(&self, sandbox: &str) {
        lock(&self.services).remove(sandbox);
    }

    async fn grant(&self, id: &str, now: i64) -> Result<Option<PreviewRow>, sandstone_db::Error> {
        if let Some((_, g)) = lock(&self.grants)
            .get(id)
            .filter(|(at, g)| at.elapsed() < FRESH && g.as_ref().is_none_or(|g| g.expires_ms > now))
        {
            return Ok(g.clone());
        }
        let found = self.lifecycle.store.preview(id).await?;
        let mut grants = lock(&self.grants);
        // Bounded: names are random, so a full cache is a flood; start over.
        if grants.len() >= MAX_CACHED_GRANTS {
            grants.clear();
        }
        grants.insert(id.to_string(), (Instant::now(), found.clone()));
        Ok(found)
    }

    async fn serve_preview(&self, id: &str, req: Request) -> Response {
        let now = now_ms();
        if req.uri().path() == BOOTSTRAP_PATH {
            let token = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
                .unwrap_or_default()
                .to_string();
            return self.bootstrap(id, &token, now).await;
        }
        let presented = cookies(req.headers(), COOKIE);
        if presented.is_empty() {
            return page(
                StatusCode::UNAUTHORIZED,
                "open this preview through the URL its grant gave",
            );
        }
        let grant = match self.grant(id, now).await {
            Ok(Some(g)) => g,
            Ok(None) => return page(StatusCode::NOT_FOUND, "no such preview"),
            Err(e) => return unavailable(&e),
        };
        // A browser may hold a stale cookie of an earlier grant beside the
        // current one (another path, another tab).
        let key_ok = grant.cookie_hash.as_deref().is_some_and(|h| {
            presented
                .iter()
                .any(|c| constant_time_eq(h.as_bytes(), token_hash(c).as_bytes()))
        });
        if !key_ok {
            return page(
                StatusCode::UNAUTHORIZED,
                "this browser holds no grant to this preview",
            );
        }
        if grant.expires_ms <= now {
            return page(
                StatusCode::FORBIDDEN,
                "this preview grant has expired; ask for a new one",
            );
        }
        // Every preview is one site (`*.domain`), so `SameSite` lets a page
        // of another preview send this one's cookie: a change it asks for
        // must come from this preview's own pages.
        let origin = self.exposure.origin(id);
        if changes_state(&req)
            && let Some(from) = req.headers().get(header::ORIGIN)
            && from.as_bytes() != origin.as_bytes()
        {
            tracing::warn!(target: "sandstone::audit", preview = id, sandbox = %grant.sandbox_id,
                method = %req.method(), origin = ?from, "cross-origin request to a preview refused");
            return page(
                StatusCode::FORBIDDEN,
                "a request from another origin may not change this preview",
            );
        }
        let rt = match self.generation(&grant.sandbox_id).await {
            Ok(Some((g, rt))) if g == grant.generation => rt,
            Ok(_) => {
                return page(
                    StatusCode::GONE,
                    "the sandbox was paused or restarted since this preview was granted; ask for a new one",
                );
            }
            Err(e) => return unavailable(&e),
        };
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        self.relay_to(&grant.sandbox_id, &rt, grant.port, &path, None, req, |h| {
            drop_cookie(h, COOKIE);
        })
        .await
    }

    /// Spends a grant's one-time token: the browser gets the grant's
    /// cookie and goes to its path.
    async fn bootstrap(&self, id: &str, token: &str, now: i64) -> Response {
        let key = sandstone_api::random_hex(32);
        let spent = self
            .lifecycle
            .store
            .bootstrap_preview(id, &token_hash(token), &token_hash(&key), now)
            .await;
        self.forget_grant(id);
        let grant = match spent {
            Ok(true) => self.grant(id, now).await,
            Ok(false) => {
                return page(
                    StatusCode::FORBIDDEN,
                    "this preview link was used already or has expired; ask for a new one",
                );
            }
            Err(e) => return unavailable(&e),
        };
        let path = match grant {
            Ok(Some(g)) => g.path,
            Ok(None) => return page(StatusCode::NOT_FOUND, "no such preview"),
            Err(e) => return unavailable(&e),
        };
        let secure = if self.exposure.scheme == "https" {
            "; Secure"
        } else {
            ""
        };
        // A session cookie of this origin alone: the grant's expiry is
        // kept here, on the server.
        let set = format!("{COOKIE}={key}; Path=/; HttpOnly; SameSite=Lax{secure}");
        let mut resp = StatusCode::SEE_OTHER.into_response();
        let headers = resp.headers_mut();
        if let (Ok(set), Ok(to)) = (HeaderValue::from_str(&set), HeaderValue::from_str(&path)) {
            headers.insert(header::SET_COOKIE, set);
            headers.insert(header::LOCATION, to);
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        resp
    }

    async fn serve_service(&self, service: &str, sandbox: &str, req: Request) -> Response {
        let config = match self.service_config(sandbox).await {
            Ok(Some(c)) => c,
            Ok(None) => return page(StatusCode::NOT_FOUND, "no such service"),
            Err(e) => return unavailable(&e),
        };
        let Some(s) = config
            .services
            .iter()
            .find(|s| s.id == service && s.ingress.public)
        else {
            return page(StatusCode::NOT_FOUND, "no such service");
        };
        let given = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let path = match canonical_path(given) {
            Ok(p) => p,
            Err(why) => {
                tracing::warn!(target: "sandstone::audit", service, sandbox, path = given, why,
                    "ambiguous path to a public service refused");
                return page(
                    StatusCode::BAD_REQUEST,
                    &format!("this path is refused: {why}"),
                );
            }
        };
        let Some(route) = s.route_for(req.method().as_str(), &path) else {
            return page(
                StatusCode::NOT_FOUND,
                "no route of this service takes this request",
            );
        };
        if let Some(r) = route
            && !authorized(r, req.headers())
        {
            tracing::warn!(target: "sandstone::audit", service, sandbox, route = %r.id,
                method = %req.method(), path, "request without its route's credential refused");
            return page(StatusCode::UNAUTHORIZED, "this route needs its credential");
        }
        let port = s.port.unwrap_or(80);
        // A route's own timeout also bounds the wait for an answer's head;
        // without one, a long poll may take as long as it takes.
        let stated = route
            .and_then(|r| r.timeout_seconds)
            .map(|t| Duration::from_secs(u64::from(t)));
        let timeout = stated.unwrap_or(DEFAULT_ROUTE_TIMEOUT);
        let rt = match self.generation(sandbox).await {
            Ok(Some((_, rt))) => rt,
            Ok(None) if route.is_some_and(|r| r.resume) && config.auto_resume => {
                match self.wake(sandbox, port, timeout).await {
                    Ok(rt) => rt,
                    Err(r) => return r,
                }
            }
            Ok(None) => {
                return page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the sandbox is not running",
                );
            }
            Err(e) => return unavailable(&e),
        };
        let path = route.map_or(path.clone(), |r| r.rewrite(&path));
        let auth = route.and_then(|r| r.auth.clone());
        self.relay_to(sandbox, &rt, port, &path, stated, req, |h| {
            // The gateway's credential is spent here; the server never sees it.
            match auth.as_ref().map(|a| (a.mode, a.header_name.as_deref())) {
                Some((AuthMode::Bearer, _)) => {
                    h.remove(header::AUTHORIZATION);
                }
                Some((AuthMode::Header, Some(name))) => {
                    h.remove(name);
                }
                _ => {}
            }
        })
        .await
    }

    /// Resumes a paused sandbox for a request, and waits (bounded) until
    /// its service accepts connections again.
    async fn wake(&self, sandbox: &str, port: u16, timeout: Duration) -> Result<Runtime, Response> {
        // The page is public: what went wrong is for the operator's log.
        let rt = self.lifecycle.ensure_running(sandbox).await.map_err(|e| {
            tracing::warn!(sandbox, error = %e, "a service's request could not resume its sandbox");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the sandbox could not be resumed; try again later",
            )
        })?;
        self.forget_services(sandbox);
        let deadline = Instant::now() + timeout;
        loop {
            match connect_in(&rt, port).await {
                Ok(_) => return Ok(rt),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => {
                    return Err(page(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!("the sandbox resumed but nothing listens on port {port}"),
                    ));
                }
            }
        }
    }

    async fn service_config(
        &self,
        sandbox: &str,
    ) -> Result<Option<Arc<ServiceConfig>>, crate::lifecycle::Error> {
        if let Some((at, c)) = lock(&self.services).get(sandbox)
            && at.elapsed() < FRESH
        {
            return Ok(Some(c.clone()));
        }
        let row = match self.lifecycle.row(sandbox).await {
            Ok(r) => r,
            Err(crate::lifecycle::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let config = crate::lifecycle::config_of(&row);
        let c = Arc::new(ServiceConfig {
            auto_resume: config.auto_resume.unwrap_or(true),
            services: config.services,
        });
        lock(&self.services).insert(sandbox.to_string(), (Instant::now(), c.clone()));
        Ok(Some(c))
    }

    /// Sends `req` to the server; `timeout` bounds the wait for its
    /// answer's head (a body or a WebSocket may then take as long as it
    /// needs).
    #[allow(clippy::too_many_arguments)]
    async fn relay_to(
        &self,
        sandbox: &str,
        rt: &Runtime,
        port: u16,
        path: &str,
        timeout: Option<Duration>,
        req: Request,
        adjust: impl FnOnce(&mut HeaderMap),
    ) -> Response {
        let Ok(uri) = format!("http://{}.{sandbox}:{port}{path}", rt.pid).parse::<Uri>() else {
            return page(StatusCode::BAD_REQUEST, "this path cannot be forwarded");
        };
        let proto = HeaderValue::from_static(if self.exposure.scheme == "https" {
            "https"
        } else {
            "http"
        });
        let sent = relay(&self.client, uri, req, |h| {
            strip_internal(h);
            // The app sees the name it is served at (`Host` stays).
            if let Some(host) = h.get(header::HOST).cloned() {
                h.insert("x-forwarded-host", host);
            }
            h.insert("x-forwarded-proto", proto);
            adjust(h);
        });
        let sent = match timeout {
            Some(t) => match tokio::time::timeout(t, sent).await {
                Ok(sent) => sent,
                Err(_) => {
                    return page(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!("the server on port {port} did not answer in time"),
                    );
                }
            },
            None => sent.await,
        };
        match sent {
            Ok(r) => r,
            Err(e) => page(
                StatusCode::BAD_GATEWAY,
                &format!("nothing answered on port {port} in the sandbox: {e}"),
            ),
        }
    }
}

/// Whether a request may change something: any method but the safe ones,
/// and any protocol upgrade (a WebSocket can send anything).
fn changes_state(req: &Request) -> bool {
    !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    ) || req.headers().contains_key(header::UPGRADE)
}

/// Serves requests whose `Host` is under the exposure domain; passes the
/// rest to the API. One for a sandbox another node runs goes there, with
/// its `Host` (once: a forwarded one is served here whatever happens).
pub async fn by_host(State(st): State<crate::AppState>, mut req: Request, next: Next) -> Response {
    let previews = &st.previews;
    // Two `Host`s could be read one way here and another by the server.
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return page(StatusCode::BAD_REQUEST, "one Host header, please");
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    let Some(label) = host.as_deref().and_then(|h| previews.exposure.label(h)) else {
        return next.run(req).await;
    };
    let Some(target) = target(label) else {
        return page(StatusCode::NOT_FOUND, "nothing is served at this name");
    };
    let sandbox = match &target {
        Target::Preview(id) => match previews.grant(id, now_ms()).await {
            Ok(g) => g.map(|g| g.sandbox_id),
            Err(e) => return unavailable(&e),
        },
        Target::Service { sandbox, .. } => Some(sandbox.to_string()),
    };
    let forwarded = req.headers().contains_key(crate::forward::FORWARDED_BY)
        && st.cluster.forwarder.is_node(req.headers());
    // Who connected, as the first node saw it: a client's own statement
    // of it is replaced, a node's is kept.
    if !forwarded {
        let peer = req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .and_then(|c| HeaderValue::from_str(&c.0.ip().to_string()).ok());
        let h = req.headers_mut();
        h.remove(header::FORWARDED);
        h.remove("x-real-ip");
        match peer {
            Some(ip) => h.insert("x-forwarded-for", ip),
            None => h.remove("x-forwarded-for"),
        };
        // A hop-by-hop name in `Connection` would have the relay drop what
        // was just set.
        crate::forward::unname_in_connection(h, "x-forwarded-for");
    }
    if let Some(sandbox) = sandbox.filter(|_| !forwarded)
        && let Ok(crate::cluster::Route::Remote { node, url }) =
            st.cluster.route(&st.lifecycle, &sandbox).await
    {
        return st.cluster.forwarder.forward_by_host(&node, &url, req).await;
    }
    match target {
        Target::Preview(id) => previews.serve_preview(id, req).await,
        Target::Service { service, sandbox } => previews.serve_service(service, sandbox, req).await,
    }
}

/// Whether a request carries the credential its route asks for.
fn authorized(route: &Route, headers: &HeaderMap) -> bool {
    let Some(auth) = &route.auth else {
        return true;
    };
    let presented = match auth.mode {
        AuthMode::None => return true,
        AuthMode::Bearer => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ")),
        AuthMode::Header => auth
            .header_name
            .as_deref()
            .and_then(|n| headers.get(n))
            .and_then(|v| v.to_str().ok()),
    };
    let want = match auth.mode {
        AuthMode::Bearer => auth.bearer_token_sha256.as_deref(),
        _ => auth.header_value_sha256.as_deref(),
    };
    match (presented, want) {
        (Some(p), Some(w)) => {
            constant_time_eq(token_hash(p).as_bytes(), w.to_ascii_lowercase().as_bytes())
        }
        _ => false,
    }
}

/// The values of cookie `name` in a request's `Cookie` headers.
fn cookies<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(name)?.strip_prefix('='))
        .collect()
}

/// Takes cookie `name` out of the request, so the app never sees the key.
fn drop_cookie(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split_once('=').is_none_or(|(n, _)| n != name))
        .map(str::to_string)
        .collect();
    headers.remove(header::COOKIE);
    if let Ok(v) = HeaderValue::from_str(&kept.join("; "))
        && !kept.is_empty()
    {
        headers.insert(header::COOKIE, v);
    }
}

fn page(status: StatusCode, text: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        format!("{text}\n"),
    )
        .into_response()
}

fn unavailable(e: &dyn std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "preview lookup failed");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "the preview store is unavailable; try again",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_under_the_domain_name_a_preview_or_a_service() {
        let e = Exposure::parse("http://*.localhost:8080").unwrap();
        assert_eq!(e.origin("pv-1"), "http://pv-1.localhost:8080");
        assert_eq!(e.label("pv-1.localhost:8080"), Some("pv-1"));
        assert_eq!(e.label("pv-1.localhost"), Some("pv-1"));
        assert_eq!(e.label("localhost:8080"), None);
        assert_eq!(e.label("a.b.localhost"), None);
        assert_eq!(e.label("pv-1.notlocalhost"), None);
        assert_eq!(target("pv-0123"), Some(Target::Preview("pv-0123")));
        assert_eq!(
            target("web--sb-12"),
            Some(Target::Service {
                service: "web",
                sandbox: "sb-12"
            })
        );
        assert_eq!(target("plain"), None);
        for bad in [
            "localhost",
            "ftp://*.x",
            "http://x.localhost",
            "http://*.:x",
        ] {
            assert!(Exposure::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_grant_cookie_is_found_and_taken_out() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sandstone_preview=k; b=2; sandstone_preview=l"),
        );
        assert_eq!(cookies(&h, COOKIE), ["k", "l"]);
        drop_cookie(&mut h, COOKIE);
        assert_eq!(h.get(header::COOKIE).unwrap(), "a=1; b=2");
        let mut only = HeaderMap::new();
        only.insert(
            header::COOKIE,
            HeaderValue::from_static("sandstone_preview=k"),
        );
        drop_cookie(&mut only, COOKIE);
        assert!(only.get(header::COOKIE).is_none());
    }

    #[test]
    fn route_credentials_are_checked_by_hash() {
        let route: Route = serde_json::from_value(serde_json::json!({
            "id": "r", "resume": false,
            "auth": {"mode": "bearer", "bearer_token_sha256": token_hash("s3cret")}
        }))
        .unwrap();
        let mut h = HeaderMap::new();
        assert!(!authorized(&route, &h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer wrong"),
        );
        assert!(!authorized(&route, &h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        assert!(authorized(&route, &h));
    }
}
