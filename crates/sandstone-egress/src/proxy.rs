//! The transparent egress proxy. Every TCP connection from a sandbox is
//! redirected here by the firewall: its original destination comes from
//! `SO_ORIGINAL_DST`, its name from the TLS SNI or the HTTP Host (for
//! protocols that carry no name, from the sandbox's own DNS answers, which
//! only deny rules and rules opting in match); the policy decides; allowed
//! connections are dialled by the proxy (to what the name resolves to,
//! when a domain rule allowed it by name, never to an address the operator
//! denies) and spliced. TLS without a server name matches no domain rule.
//! Denied HTTP gets a 403 saying why; anything else denied is reset.

use crate::audit::{AuditEvent, EventKind, Verdict, now_ms};
use crate::counted::Counted;
use crate::credentials::{FailurePolicy, LoginProtocol, ProjectionError, SourceValues};
use crate::login::Login;
use crate::policy::{AppProtocol, CompiledPolicy, Connection, Decision, Layer, Transport};
use crate::sniff::{MAX_SNIFF, Sniffed, sniff};
use crate::socks5::{Dial, Socks5};
use crate::state::{Egress, SandboxNet};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long the proxy waits for a client's first bytes before treating the
/// connection as opaque (server-speaks-first protocols).
const FIRST_BYTES: Duration = Duration::from_millis(300);

pub async fn serve(listener: TcpListener, egress: Arc<Egress>) {
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors: wait rather than spin.
                tracing::warn!(error = %e, "egress proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let egress = egress.clone();
        tokio::spawn(async move { handle(conn, peer, egress).await });
    }
}

fn original_dst(s: &TcpStream) -> std::io::Result<SocketAddr> {
    sandstone_sys::net::original_dst(s.as_fd()).map(SocketAddr::V4)
}

/// Reads until the protocol is known (or the client stays silent).
async fn first_bytes(conn: &mut TcpStream) -> (Vec<u8>, Sniffed) {
    let mut buf = Vec::new();
    let deadline = Instant::now() + FIRST_BYTES;
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => {
                return (
                    buf.clone(),
                    if buf.is_empty() {
                        Sniffed::Other
                    } else {
                        sniff_or_other(&buf)
                    },
                );
            }
        }
        match sniff(&buf) {
            Sniffed::NeedMore if buf.len() < MAX_SNIFF => continue,
            Sniffed::NeedMore => return (buf, Sniffed::Other),
            s => return (buf, s),
        }
    }
}

fn sniff_or_other(buf: &[u8]) -> Sniffed {
    match sniff(buf) {
        Sniffed::NeedMore => Sniffed::Other,
        s => s,
    }
}

/// One connection from a sandbox, as the proxy saw it.
pub(crate) struct Flow {
    pub sandbox: Arc<SandboxNet>,
    pub dst: SocketAddr,
    /// The name the connection stated (SNI, Host).
    pub host: Option<String>,
    /// For one that stated none, the name the sandbox's DNS answers gave.
    pub resolved: Option<String>,
    pub app: AppProtocol,
    /// Where the proxy connected for it, once decided.
    pub dialed: Option<SocketAddr>,
    started: Instant,
}

impl Flow {
    /// An audit record about this connection (`kind` `connection`, or
    /// `request` for one HTTP request on an intercepted connection).
    pub fn event(&self, kind: EventKind, d: &Decision, reason: String) -> AuditEvent {
        AuditEvent {
            sandbox_id: self.sandbox.id.clone(),
            time: now_ms(),
            kind,
            dest_name: self.host.clone().or_else(|| self.resolved.clone()),
            dest_ip: Some(self.dst.ip().to_string()),
            dest_port: self.dst.port(),
            dialed: self.dialed.map(|a| a.to_string()),
            protocol: format!("{:?}", self.app).to_lowercase(),
            decision: Verdict::of(d.allowed),
            rule: d.rule.clone(),
            reason,
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: self.started.elapsed().as_millis() as u64,
        }
    }

    fn audit(&self, egress: &Egress, d: &Decision, reason: String, up: u64, down: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.sandbox.counters;
        if d.allowed { &c.allowed } else { &c.denied }.fetch_add(1, Relaxed);
        c.bytes_up.fetch_add(up, Relaxed);
        c.bytes_down.fetch_add(down, Relaxed);
        if up + down > 0 {
            let dest = match self.host.as_ref().or(self.resolved.as_ref()) {
                Some(name) => format!("{name}:{}", self.dst.port()),
                None => self.dst.to_string(),
            };
            self.sandbox.count_destination(dest, up, down);
        }
        egress.audit.record(AuditEvent {
            bytes_up: up,
            bytes_down: down,
            ..self.event(EventKind::Connection, d, reason)
        });
    }
}

/// Makes the coming close a reset (SO_LINGER 0), so the client fails at
/// once rather than waiting; a zero linger never blocks.
fn reset(conn: &TcpStream) {
    // On a connected TCP socket this cannot fail; at worst the close is
    // an orderly one.
    let _ = sandstone_sys::net::set_reset_on_close(conn.as_fd());
}

async fn refuse(mut conn: TcpStream, flow: &Flow, reason: &str) {
    if flow.app == AppProtocol::Http {
        let body = format!("sandstone egress: {reason}\n");
        let resp = format!(
            "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(resp.as_bytes()).await;
        let _ = conn.shutdown().await;
    } else {
        reset(&conn);
    }
}

async fn handle(mut conn: TcpStream, peer: SocketAddr, egress: Arc<Egress>) {
    let Some(sandbox) = egress.sandbox(peer.ip()) else {
        return;
    };
    let Ok(_open) = sandbox.connections.clone().try_acquire_owned() else {
        tracing::warn!(sandbox = %sandbox.id, "connection refused: too many open connections");
        return reset(&conn);
    };
    let Ok(dst) = original_dst(&conn) else { return };
    let started = Instant::now();
    // A login protocol whose server speaks first (MySQL's) sends nothing
    // until it is greeted: waiting for its first bytes would only delay it.
    let server_first = sandbox.name_of(dst.ip()).is_some_and(|name| {
        let policy = sandbox.policy();
        let login = policy.injection.login(&name, dst.port());
        login.is_some_and(|(protocol, ..)| protocol.server_first())
    });
    let (head, sniffed) = match server_first {
        true => (Vec::new(), Sniffed::Other),
        false => first_bytes(&mut conn).await,
    };
    let (host, app) = match &sniffed {
        Sniffed::Tls { sni } => (sni.clone(), AppProtocol::Tls),
        Sniffed::Http { host, .. } => (host.clone(), AppProtocol::Http),
        Sniffed::Ssh => (None, AppProtocol::Ssh),
        _ => (None, AppProtocol::Other),
    };
    // A name the sandbox did not state comes from its own DNS answers.
    let resolved = host.is_none().then(|| sandbox.name_of(dst.ip())).flatten();
    let mut flow = Flow {
        sandbox: sandbox.clone(),
        dst,
        host,
        resolved,
        app,
        dialed: None,
        started,
    };
    let policy = sandbox.policy();
    let c = Connection {
        ip: Some(dst.ip()),
        port: dst.port(),
        transport: Transport::Tcp,
        host: flow.host.as_deref(),
        resolved: flow.resolved.as_deref(),
        app,
    };
    let mut decision = policy.decide(&egress.operator, &c);
    let tls = app == AppProtocol::Tls;
    // Credential and protocol rules name hosts: such connections are
    // terminated here (every request is seen), and so is every HTTP(S)
    // connection where the policy enforces that each request's Host is
    // the name connected to.
    let for_credentials = flow.host.as_deref().is_some_and(|h| {
        policy.injection.intercepts(h, dst.port(), tls)
            || policy.operations.intercepts(h, dst.port())
    });
    let intercept = decision.allowed
        && egress.interceptor.is_some()
        && matches!(app, AppProtocol::Tls | AppProtocol::Http)
        && flow.host.is_some()
        && (for_credentials || policy.policy.egress.enforce_request_host);
    // A Host or SNI naming an allowed domain does not make an address the
    // sandbox chose allowed: the proxy dials what the name resolves to. A
    // connection terminated for credentials always does, whatever rule
    // allowed it: a credential must reach the named host, not an address
    // the sandbox paired with its name. One a CIDR rule (or the mode)
    // allowed goes to the address the sandbox chose, terminated or not.
    // A login or an SSH key a credential rule applies to the connection.
    // Such protocols state no name: it is the one the sandbox's own DNS
    // answer gave, and the credential goes where that name resolves.
    let bound = match (app, flow.resolved.as_deref()) {
        (AppProtocol::Other, Some(name)) => policy
            .injection
            .login(name, dst.port())
            .map(|(protocol, rule, binding)| (Bound::Login(protocol), name, rule, binding)),
        (AppProtocol::Ssh, Some(name)) => policy
            .injection
            .ssh(name, dst.port())
            .map(|(rule, binding)| (Bound::Ssh, name, rule, binding)),
        _ => None,
    }
    .map(|(kind, name, rule, binding)| (kind, name.to_string(), rule.clone(), binding.clone()));
    let dial_name = match (&bound, intercept && for_credentials) {
        (Some((_, name, ..)), _) => Some(name.as_str()),
        (None, true) => flow.host.as_deref(),
        (None, false) => policy.dial_name(&c),
    }
    .filter(|_| decision.allowed)
    .map(str::to_string);
    let target = match &dial_name {
        Some(name) => match resolve_allowed(&egress, name, dst.port()).await {
            Ok(addr) => addr,
            Err(why) => {
                let why = why.to_string();
                decision = Decision {
                    allowed: false,
                    layer: Layer::Operator,
                    rule: Some(why.clone()),
                };
                let reason = format!("{name} resolves to a denied address ({why})");
                flow.audit(&egress, &decision, reason.clone(), 0, 0);
                return refuse(conn, &flow, &reason).await;
            }
        },
        None => dst,
    };
    let shown = match flow.host.as_ref().or(flow.resolved.as_ref()) {
        Some(h) => format!("{h}:{}", dst.port()),
        None => dst.to_string(),
    };
    let mut reason = decision.reason(&shown);
    // A connection protocol rules govern is inspected or not made: spliced,
    // it would carry what the rules refuse.
    let governed = flow
        .host
        .as_deref()
        .is_some_and(|h| policy.operations.intercepts(h, dst.port()));
    if decision.allowed && governed && !intercept {
        decision.allowed = false;
        reason = format!("{reason}, but protocol rules govern it and it cannot be inspected here");
    }
    if !decision.allowed {
        if tls && flow.host.is_none() && decision.layer != Layer::Operator {
            // Only CIDR rules (or allow-all) can allow it: an address
            // serves many names, and an earlier DNS answer is not this
            // connection's name.
            reason = format!("TLS without a server name: {reason}");
        }
        flow.audit(&egress, &decision, reason.clone(), 0, 0);
        return refuse(conn, &flow, &reason).await;
    }
    flow.dialed = Some(target);
    let dial = match customer_proxy(&egress, &flow.sandbox.id, &policy).await {
        Ok(via) => Dial { target, via },
        Err(why) => {
            let decision = Decision {
                allowed: false,
                layer: Layer::Rule,
                rule: Some("egress.proxy".into()),
            };
            let reason = format!("{reason}, but the policy's egress proxy {why}");
            flow.audit(&egress, &decision, reason.clone(), 0, 0);
            return refuse(conn, &flow, &reason).await;
        }
    };
    if let Some(via) = dial.via() {
        reason = format!("{reason}; via SOCKS5 proxy {via}");
    }
    if let Some((kind, name, rule, binding)) = bound {
        let source = match &egress.credentials {
            Some(store) => store
                .resolve(&flow.sandbox.id, &binding.source_ref)
                .await
                .map_err(ProjectionError::from)
                .and_then(|values| kind.credential(&values)),
            None => Err(ProjectionError::NoStore),
        };
        let credential = format!("credential {:?} ({})", binding.reference, kind.what());
        let source = match source {
            Err(e) if rule.failure_policy == FailurePolicy::FailOpen => {
                reason = format!(
                    "{reason}; {credential} not applied: {e}; relayed without it (failurePolicy fail-open)"
                );
                return splice_to(&egress, flow, &decision, reason, conn, &head, &dial).await;
            }
            Err(e) => {
                decision = Decision {
                    allowed: false,
                    layer: Layer::Rule,
                    rule: Some(rule.name.clone()),
                };
                Err(format!(
                    "{credential} could not be applied: {e}; refused (failurePolicy fail-closed)"
                ))
            }
            Ok(c) => Ok(c),
        };
        let refused = source.as_ref().err().cloned();
        let io = Counted::new(conn, head, flow.sandbox.clone());
        let (up, down) = (io.up.clone(), io.down.clone());
        let outcome = match kind {
            Bound::Login(protocol) => {
                let login = source.and_then(Credential::login);
                let tls = egress
                    .interceptor
                    .as_ref()
                    .and_then(|i| i.login_tls(protocol));
                match protocol {
                    LoginProtocol::Postgres => {
                        crate::postgres::serve(io, &dial, &name, tls, login).await
                    }
                    LoginProtocol::Mysql => crate::mysql::serve(io, &dial, &name, tls, login).await,
                    LoginProtocol::Redis => crate::redis::serve(io, &dial, login).await,
                }
            }
            Bound::Ssh => {
                let spec = binding.projection.ssh_proxy.clone().unwrap_or_default();
                let upstream = crate::ssh_proxy::Upstream {
                    dial,
                    host: name.clone(),
                    pins: crate::ssh_proxy::Pins::parse(&spec.known_hosts),
                    user: spec.upstream_username.clone(),
                    key: source.and_then(Credential::key),
                };
                let allowed = spec.sandbox_keys().unwrap_or_default();
                crate::ssh_proxy::serve(io, egress.ssh.as_deref(), allowed, upstream).await
            }
        };
        let how = match (refused, outcome.logged_in, outcome.error) {
            (Some(why), ..) => why,
            (None, true, _) => format!("{credential}: logged in to {name} upstream"),
            (None, false, e) => format!(
                "{credential}: the login to {name} failed: {}",
                e.unwrap_or_else(|| "closed".to_string())
            ),
        };
        let reason = format!("{reason}; {how}");
        let (up, down) = (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed));
        return flow.audit(&egress, &decision, reason, up, down);
    }
    if let Some(interceptor) = egress.interceptor.as_ref().filter(|_| intercept) {
        let flow = Arc::new(flow);
        let (up, down) = interceptor
            .serve(egress.clone(), flow.clone(), conn, head, dial)
            .await;
        let why = match for_credentials {
            true => "credential rules",
            false => "the policy's enforceRequestHost",
        };
        let reason = format!("{reason}; terminated for {why}");
        return flow.audit(&egress, &decision, reason, up, down);
    }
    splice_to(&egress, flow, &decision, reason, conn, &head, &dial).await
}

/// The policy's customer proxy allowed connections leave through (logged
/// in to with its binding's source), if it has one; why not, when the
/// proxy cannot be used.
async fn customer_proxy(
    egress: &Egress,
    sandbox: &str,
    policy: &CompiledPolicy,
) -> Result<Option<Arc<Socks5>>, String> {
    let Some(p) = &policy.policy.egress.proxy else {
        return Ok(None);
    };
    let (host, port) = p
        .host_port()
        .ok_or_else(|| format!("address {:?} is not host:port", p.address))?;
    let proxy = resolve_allowed(egress, host, port)
        .await
        .map_err(|e| format!("cannot be reached: {e}"))?;
    let login = match &p.credential_ref {
        None => None,
        Some(r) => {
            let binding = policy
                .injection
                .bindings
                .iter()
                .find(|b| &b.reference == r)
                .ok_or_else(|| format!("login: no credentialBinding {r:?}"))?;
            let store = egress.credentials.as_ref().ok_or_else(|| {
                format!(
                    "login {r:?} could not be applied: {}",
                    ProjectionError::NoStore
                )
            })?;
            let values = store
                .resolve(sandbox, &binding.source_ref)
                .await
                .map_err(ProjectionError::from)
                .and_then(|values| Login::from_values(&values))
                .map_err(|e| format!("login {r:?} could not be applied: {e}"))?;
            Some((binding.source_ref.clone(), values))
        }
    };
    Ok(Some(Arc::new(Socks5 { proxy, login })))
}

/// A credential a rule applies to a whole connection.
#[derive(Clone, Copy)]
enum Bound {
    /// A login the proxy completes upstream.
    Login(LoginProtocol),
    /// SSH re-originated with a key (`ssh_proxy.rs`).
    Ssh,
}

/// A bound credential's source, read as its kind needs.
enum Credential {
    Login(Login),
    Key(Arc<russh::keys::PrivateKey>),
}

impl Bound {
    fn what(self) -> &'static str {
        match self {
            Bound::Login(_) => "username/password",
            Bound::Ssh => "SSH key",
        }
    }

    fn credential(self, values: &SourceValues) -> Result<Credential, ProjectionError> {
        match self {
            Bound::Login(_) => Login::from_values(values).map(Credential::Login),
            Bound::Ssh => {
                crate::ssh_proxy::key_from_values(values).map(|k| Credential::Key(Arc::new(k)))
            }
        }
    }
}

impl Credential {
    /// The login (a source read for a login is one).
    fn login(self) -> Result<Login, String> {
        match self {
            Credential::Login(l) => Ok(l),
            Credential::Key(_) => Err("the source is a key, not a login".into()),
        }
    }

    /// The key (a source read for SSH is one).
    fn key(self) -> Result<Arc<russh::keys::PrivateKey>, String> {
        match self {
            Credential::Key(k) => Ok(k),
            Credential::Login(_) => Err("the source is a login, not a key".into()),
        }
    }
}

/// Relays an allowed connection untouched to where `dial` goes, and
/// audits it.
async fn splice_to(
    egress: &Egress,
    flow: Flow,
    decision: &Decision,
    reason: String,
    conn: TcpStream,
    head: &[u8],
    dial: &Dial,
) {
    let upstream = match dial.connect().await {
        Ok(s) => s,
        Err(e) => {
            flow.audit(egress, decision, format!("{reason}; upstream {e}"), 0, 0);
            reset(&conn);
            return;
        }
    };
    let (up, down) = splice(conn, upstream, head, &flow.sandbox.bandwidth).await;
    flow.audit(egress, decision, reason, up, down);
}

/// Resolves `name` on the host (an address stands for itself) and returns
/// the first address the operator allows (DNS rebinding to a private or
/// local address is refused).
async fn resolve_allowed(
    egress: &Egress,
    name: &str,
    port: u16,
) -> Result<SocketAddr, Unreachable> {
    let addrs: Vec<SocketAddr> = match name.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => crate::dns::resolve(egress.upstream_dns, name)
            .await
            .map_err(|error| Unreachable::Resolve {
                name: name.to_string(),
                error,
            })?
            .into_iter()
            .map(|ip| SocketAddr::new(IpAddr::V4(ip), port))
            .collect(),
    };
    let probe = |ip: IpAddr| Connection {
        ip: Some(ip),
        port,
        transport: Transport::Tcp,
        host: None,
        resolved: None,
        app: AppProtocol::Other,
    };
    // Only the operator's rules judge the addresses a name resolves to.
    addrs
        .iter()
        .find(|a| egress.operator.decide(&probe(a.ip())).is_none())
        .copied()
        .ok_or_else(|| Unreachable::Denied {
            name: name.to_string(),
            addrs,
        })
}

/// Why a name a rule allowed gives no address to dial: the operator rule
/// the proxy's decision names.
#[derive(Debug, thiserror::Error)]
enum Unreachable {
    #[error("cannot resolve {name}: {error}")]
    Resolve { name: String, error: std::io::Error },
    /// Every address the name resolves to is one the operator denies.
    #[error("{name} -> {}", addrs.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(","))]
    Denied {
        name: String,
        addrs: Vec<SocketAddr>,
    },
}

async fn splice(
    client: TcpStream,
    mut upstream: TcpStream,
    head: &[u8],
    limit: &crate::bandwidth::Bandwidth,
) -> (u64, u64) {
    // A relay must not add Nagle delays of its own.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    if upstream.write_all(head).await.is_err() {
        return (0, 0);
    }
    let (up, down) = crate::relay::relay(&client, &upstream, limit).await;
    (up + head.len() as u64, down)
}
