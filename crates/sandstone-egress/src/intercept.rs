//! TLS termination for credential injection, and for policies that
//! enforce request hosts (`enforceRequestHost`). A connection whose
//! destination some credential rule names (or, under that setting, any
//! allowed HTTP(S) connection that names its host) is answered by the
//! proxy itself: it presents a leaf certificate for the SNI minted from the
//! installation CA (cached per host), speaks HTTP/1.1 or HTTP/2 to the sandbox as ALPN
//! chose, and re-originates each request over TLS it verifies against the
//! host's roots (plus the operator's extra CAs). Every request is checked:
//! its Host must be the name the connection was opened for (otherwise
//! `421`), the live policy must still allow it, and only a request matching
//! a rule gets the credential. Other hosts — a redirect's target included —
//! are other connections and never match this one's rules. A rule that
//! projects a client certificate applies to the connection instead: its
//! upstream connections present it (`client_cert.rs`), are pooled apart,
//! and serve no request once the policy names another certificate.

use crate::aead::provider;
use crate::audit::EventKind;
use crate::client_cert::ClientCertificate;
use crate::counted::Counted;
use crate::credentials::{
    FailurePolicy, LoginProtocol, MAX_SUBSTITUTED_BODY, ProjectionError, RequestParts, project,
};
use crate::policy::{AppProtocol, Connection, Decision, Layer, Transport};
use crate::protocol_rules::{MAX_INSPECTED_BODY, McpVerdict, check_mcp};
use crate::proxy::Flow;
use crate::socks5::{Dial, DialError};
use crate::state::Egress;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::client::conn::{http1 as client1, http2 as client2};
use hyper::header::{HOST, HeaderMap, HeaderName};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

type Body = BoxBody<Bytes, hyper::Error>;

/// Leaves are valid this long and reused for most of it.
const LEAF_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
const LEAF_REUSE: Duration = Duration::from_secs(6 * 24 * 3600);
const MAX_LEAVES: usize = 4096;
const UPSTREAM_READ_BUF: usize = 256 << 10;
/// Idle upstream HTTP/1.1 connections kept per sandbox and origin, and for
/// how long: a sandbox's next connection to the same origin (each `curl`
/// or `git` command opens one) skips the upstream handshake.
const MAX_IDLE_UPSTREAM: usize = 8;
const UPSTREAM_IDLE: Duration = Duration::from_secs(30);
const MAX_POOLS: usize = 4096;

/// Why TLS interception could not be set up, or an intercepted connection
/// from a sandbox ended in error (logged, never shown to the sandbox).
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error("the CA certificate: {0}")]
    CaCertificate(rustls::pki_types::pem::Error),
    /// An upstream root bundle (the host's or an operator's) is unreadable.
    #[error("{}: {error}", file.display())]
    Roots {
        file: PathBuf,
        error: rustls::pki_types::pem::Error,
    },
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    #[error("minting a leaf for {host}: {error}")]
    Mint { host: String, error: rcgen::Error },
    #[error("TLS from the sandbox: {0}")]
    Accept(std::io::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Why a request could not be sent upstream: the sandbox sees it in a 502
/// (`upstream host:port: …`).
#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("{0:?} is not a server name")]
    ServerName(String),
    #[error("TLS verification failed: {0}")]
    Verify(std::io::Error),
    #[error("a request path that is not a URI")]
    Path,
    #[error("a bad Host")]
    Host,
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Upstream connections are shared only within one sandbox, never across,
/// only among connections presenting the same client certificate (by
/// fingerprint), if any, and going through the same customer proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    sandbox: String,
    host: String,
    target: SocketAddr,
    /// The customer proxy and its login's source.
    via: Option<(SocketAddr, Option<String>)>,
    tls: bool,
    fingerprint: Option<String>,
}

/// What an intercepted TLS connection presents upstream, decided when it
/// opens.
enum ClientAuth {
    /// No rule projects a client certificate for its destination.
    None,
    Presented {
        binding: String,
        rule: String,
        config: Arc<ClientConfig>,
        fingerprint: String,
    },
    /// The certificate could not be had: each request is refused
    /// (fail-closed) or sent without it (fail-open), saying why.
    Failed {
        binding: String,
        rule: String,
        reason: String,
        closed: bool,
    },
}

impl ClientAuth {
    fn binding(&self) -> Option<&str> {
        match self {
            ClientAuth::None => None,
            ClientAuth::Presented { binding, .. } | ClientAuth::Failed { binding, .. } => {
                Some(binding)
            }
        }
    }
}

pub struct Interceptor {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_der: CertificateDer<'static>,
    leaves: Mutex<HashMap<String, (Instant, Arc<ServerConfig>)>>,
    /// The roots upstreams are verified against: the host's and the
    /// operator's.
    roots: RootCertStore,
    upstream_tls: Arc<ClientConfig>,
    /// The same roots for PostgreSQL, offering its ALPN name (PostgreSQL 17
    /// refuses a connection offering only HTTP's), and for MySQL (no ALPN).
    postgres_tls: Arc<ClientConfig>,
    mysql_tls: Arc<ClientConfig>,
    pools: Mutex<HashMap<PoolKey, Pool>>,
    reaped: Mutex<Instant>,
}

impl Interceptor {
    /// `extra_roots` are PEM files the operator trusts for upstreams in
    /// addition to the host's roots (e.g. an internal CA).
    pub fn new(
        ca: &crate::ca::InstallationCa,
        extra_roots: &[PathBuf],
    ) -> Result<Self, InterceptError> {
        let ca_der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes())
            .map_err(InterceptError::CaCertificate)?;
        let mut roots = RootCertStore::empty();
        let host = std::path::Path::new(crate::ca::HOST_ROOTS);
        let files = host.exists().then(|| host.to_path_buf());
        for file in files.iter().chain(extra_roots) {
            let unreadable = |error| InterceptError::Roots {
                file: file.clone(),
                error,
            };
            for c in CertificateDer::pem_file_iter(file).map_err(unreadable)? {
                let c = c.map_err(unreadable)?;
                // A host bundle may hold certificates rustls cannot use.
                let _ = roots.add(c);
            }
        }
        let mut upstream = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        upstream.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mysql = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let mut postgres = mysql.clone();
        postgres.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Interceptor {
            issuer: ca.issuer()?,
            ca_der,
            leaves: Mutex::new(HashMap::new()),
            roots,
            upstream_tls: Arc::new(upstream),
            postgres_tls: Arc::new(postgres),
            mysql_tls: Arc::new(mysql),
            pools: Mutex::new(HashMap::new()),
            reaped: Mutex::new(Instant::now()),
        })
    }

    /// Upstream TLS for a login protocol (Redis's is not spoken over TLS
    /// here).
    pub(crate) fn login_tls(&self, protocol: LoginProtocol) -> Option<Arc<ClientConfig>> {
        match protocol {
            LoginProtocol::Postgres => Some(self.postgres_tls.clone()),
            LoginProtocol::Mysql => Some(self.mysql_tls.clone()),
            LoginProtocol::Redis => None,
        }
    }

    fn pool(&self, key: PoolKey) -> Pool {
        let mut pools = self.pools.lock().expect("lock poisoned");
        // Now and then, close what sat idle too long in any pool, and forget
        // pools no connection uses.
        let mut reaped = self.reaped.lock().expect("lock poisoned");
        if reaped.elapsed() >= UPSTREAM_IDLE || pools.len() >= MAX_POOLS {
            *reaped = Instant::now();
            for p in pools.values() {
                p.lock()
                    .expect("lock poisoned")
                    .retain(|i| i.since.elapsed() < UPSTREAM_IDLE);
            }
            pools.retain(|_, p| {
                Arc::strong_count(p) > 1 || !p.lock().expect("lock poisoned").is_empty()
            });
        }
        pools.entry(key).or_default().clone()
    }

    /// The TLS server configuration presenting a leaf for `host`.
    fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, InterceptError> {
        if let Some((born, cfg)) = self.leaves.lock().expect("lock poisoned").get(host)
            && born.elapsed() < LEAF_REUSE
        {
            return Ok(cfg.clone());
        }
        let cfg = Arc::new(self.mint(host)?);
        let mut leaves = self.leaves.lock().expect("lock poisoned");
        if leaves.len() >= MAX_LEAVES {
            leaves.clear();
        }
        leaves.insert(host.to_string(), (Instant::now(), cfg.clone()));
        Ok(cfg)
    }

    fn mint(&self, host: &str) -> Result<ServerConfig, InterceptError> {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
        let e = |error| InterceptError::Mint {
            host: host.to_string(),
            error,
        };
        let key = KeyPair::generate().map_err(e)?;
        let mut params = CertificateParams::new(vec![host.to_string()]).map_err(e)?;
        params.distinguished_name.push(DnType::CommonName, host);
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // An hour of slack for clocks that lag the host's.
        let start = since_epoch.saturating_sub(Duration::from_secs(3600));
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        params.not_before = epoch + start;
        params.not_after = epoch + start + LEAF_LIFETIME;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(e)?;
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone(), self.ca_der.clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }

    /// Serves one sandbox connection to where `dial` goes until it closes;
    /// returns
    /// the bytes it carried (from, to the sandbox).
    pub(crate) async fn serve(
        &self,
        egress: Arc<Egress>,
        flow: Arc<Flow>,
        client: TcpStream,
        head: Vec<u8>,
        dial: Dial,
    ) -> (u64, u64) {
        let io = Counted::new(client, head, flow.sandbox.clone());
        let (up, down) = (io.up.clone(), io.down.clone());
        let host = flow.host.clone().unwrap_or_default();
        let tls = flow.app == AppProtocol::Tls;
        let client_auth = if tls {
            self.client_auth(&egress, &flow, &host).await
        } else {
            ClientAuth::None
        };
        let (upstream_tls, fingerprint) = match &client_auth {
            ClientAuth::Presented {
                config,
                fingerprint,
                ..
            } => (Some(config.clone()), Some(fingerprint.clone())),
            _ => (tls.then(|| self.upstream_tls.clone()), None),
        };
        let key = PoolKey {
            sandbox: flow.sandbox.id.clone(),
            host: host.clone(),
            target: dial.target,
            via: dial.identity(),
            tls,
            fingerprint,
        };
        let session = Arc::new(Session {
            egress,
            flow: flow.clone(),
            host: host.clone(),
            client_auth,
            upstream: Upstream {
                dial,
                host: host.clone(),
                tls: upstream_tls,
                idle: self.pool(key),
            },
        });
        let outcome = if tls {
            self.serve_tls(io, &host, session).await
        } else {
            serve_http(io, false, session).await
        };
        if let Err(e) = outcome {
            tracing::debug!(sandbox = %flow.sandbox.id, host = %host, error = %e, "intercepted connection ended");
        }
        (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed))
    }

    /// The client certificate a TLS connection to `host` presents upstream,
    /// read from its source now (a rotation applies to the next connection).
    async fn client_auth(&self, egress: &Egress, flow: &Flow, host: &str) -> ClientAuth {
        let policy = flow.sandbox.policy();
        let port = flow.dst.port();
        let Some((rule, binding)) = policy.injection.client_certificate(host, port) else {
            return ClientAuth::None;
        };
        let cert = match &egress.credentials {
            Some(store) => store
                .resolve(&flow.sandbox.id, &binding.source_ref)
                .await
                .map_err(ProjectionError::from)
                .and_then(|values| ClientCertificate::from_values(&values)),
            None => Err(ProjectionError::NoStore),
        };
        let config = cert.and_then(|c| {
            let config = c
                .config(self.roots.clone())
                .map_err(|e| ProjectionError::ClientCertificate("privateKeyPem", e.to_string()))?;
            Ok((config, c.fingerprint))
        });
        match config {
            Ok((config, fingerprint)) => ClientAuth::Presented {
                binding: binding.reference.clone(),
                rule: rule.name.clone(),
                config: Arc::new(config),
                fingerprint,
            },
            Err(e) => ClientAuth::Failed {
                binding: binding.reference.clone(),
                rule: rule.name.clone(),
                reason: e.to_string(),
                closed: rule.failure_policy == FailurePolicy::FailClosed,
            },
        }
    }

    async fn serve_tls(
        &self,
        io: Counted,
        host: &str,
        session: Arc<Session>,
    ) -> Result<(), InterceptError> {
        let cfg = self.server_config(host)?;
        let tls = tokio_rustls::TlsAcceptor::from(cfg)
            .accept(io)
            .await
            .map_err(InterceptError::Accept)?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        serve_http(tls, h2, session).await
    }
}

async fn serve_http<I>(io: I, h2: bool, session: Arc<Session>) -> Result<(), InterceptError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let s = session.clone();
        async move { Ok::<_, std::convert::Infallible>(s.forward(req).await) }
    });
    let io = TokioIo::new(io);
    let r = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await
    };
    Ok(r?)
}

/// One intercepted connection: where it goes and how requests get there.
struct Session {
    egress: Arc<Egress>,
    flow: Arc<Flow>,
    host: String,
    client_auth: ClientAuth,
    upstream: Upstream,
}

fn text(status: StatusCode, msg: String) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("sandstone egress: {msg}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "text/plain".parse().expect("static value"));
    r
}

/// Headers that describe one hop, not the request.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        h.remove(n);
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`; a bare IPv6 is left whole.
fn without_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((h, p))
            if !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (h.ends_with(']') || !h.contains(':')) =>
        {
            h
        }
        _ => authority,
    }
}

impl Session {
    /// Audits the connection's client certificate for a request, or refuses
    /// the request: the certificate could not be had (fail-closed), or the
    /// live policy names another one than the connection was opened with.
    fn client_certificate(
        &self,
        injection: &crate::credentials::Injection,
        port: u16,
        shown: &str,
    ) -> Option<Response<Body>> {
        let now = injection
            .client_certificate(&self.host, port)
            .map(|(_, b)| b.reference.as_str());
        if now != self.client_auth.binding() {
            let reason = format!(
                "the policy's client certificate for {shown} changed since the connection opened; open a new connection"
            );
            self.record(false, None, reason.clone());
            return Some(text(StatusCode::MISDIRECTED_REQUEST, reason));
        }
        match &self.client_auth {
            ClientAuth::None => None,
            ClientAuth::Presented { binding, rule, .. } => {
                let reason =
                    format!("credential {binding:?} (client certificate) presented for {shown}");
                self.record(true, Some(rule.clone()), reason);
                None
            }
            ClientAuth::Failed {
                binding,
                rule,
                reason,
                closed,
            } => {
                let outcome = if *closed {
                    "refused (failurePolicy fail-closed)"
                } else {
                    "sent without it (failurePolicy fail-open)"
                };
                let reason = format!(
                    "credential {binding:?} (client certificate) could not be presented for {shown}: {reason}; {outcome}"
                );
                self.record(!closed, Some(rule.clone()), reason.clone());
                closed.then(|| text(StatusCode::BAD_GATEWAY, reason))
            }
        }
    }

    fn record(&self, allowed: bool, rule: Option<String>, reason: String) {
        let d = Decision {
            allowed,
            layer: Layer::Rule,
            rule,
        };
        self.egress
            .audit
            .record(self.flow.event(EventKind::Request, &d, reason));
    }

    async fn forward(&self, req: Request<Incoming>) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let authority = parts
            .uri
            .authority()
            .map(|a| a.host().to_string())
            .or_else(|| {
                let h = parts.headers.get(HOST)?.to_str().ok()?;
                Some(without_port(h).to_string())
            });
        let port = self.flow.dst.port();
        let tls = self.flow.app == AppProtocol::Tls;
        let target = format!("{}:{port}", self.host);
        if !authority
            .as_deref()
            .is_some_and(|a| a.trim_end_matches('.').eq_ignore_ascii_case(&self.host))
        {
            let reason = format!(
                "a request for {:?} on a connection to {target} (Host must match the name connected to)",
                authority.unwrap_or_default()
            );
            self.record(false, None, reason.clone());
            return text(StatusCode::MISDIRECTED_REQUEST, reason);
        }
        // The policy may have changed since the connection opened.
        let policy = self.flow.sandbox.policy();
        let app = self.flow.app;
        let decision = policy.decide(
            &self.egress.operator,
            &Connection {
                ip: Some(self.upstream.dial.target.ip()),
                port,
                transport: Transport::Tcp,
                host: Some(&self.host),
                resolved: None,
                app,
            },
        );
        if !decision.allowed {
            let reason = decision.reason(&target);
            self.record(false, decision.rule, reason.clone());
            return text(StatusCode::FORBIDDEN, reason);
        }
        let mut path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let method = parts.method.to_string();
        // Logged without the query, which may carry a substituted value.
        let shown = format!("{method} {target}{}", parts.uri.path());
        if let Err(r) = policy
            .operations
            .check_http(&self.host, port, &method, &path)
        {
            let reason = format!("{shown}: {}", r.reason);
            self.record(false, Some(r.rule), reason.clone());
            return text(StatusCode::FORBIDDEN, reason);
        }
        // A body an MCP rule must read is read whole, once.
        let mcp = policy
            .operations
            .mcp_rules(&self.host, port, &method, &path);
        let mut body = ReqBody::Streaming(body);
        if !mcp.is_empty() {
            let encoded = parts
                .headers
                .get(hyper::header::CONTENT_ENCODING)
                .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
            let read = if encoded {
                Err("a compressed body cannot be inspected".to_string())
            } else {
                body.into_whole(MAX_INSPECTED_BODY, "inspected by an MCP rule")
                    .await
            };
            let bytes = match read {
                Ok(b) => b,
                Err(reason) => {
                    let reason = format!("{shown}: {reason}");
                    self.record(false, Some(mcp[0].name.clone()), reason.clone());
                    return text(StatusCode::FORBIDDEN, reason);
                }
            };
            match check_mcp(&mcp, &bytes) {
                McpVerdict::Allowed(tools) => {
                    for tool in tools {
                        let reason = format!("{shown}: tool {tool:?} allowed");
                        self.record(true, Some(mcp[0].name.clone()), reason);
                    }
                }
                McpVerdict::Refused { refusal, id } => {
                    let reason = format!("{shown}: {}", refusal.reason);
                    self.record(false, Some(refusal.rule), reason.clone());
                    return match id {
                        Some(id) => json_rpc_error(id, &reason),
                        None => text(StatusCode::FORBIDDEN, reason),
                    };
                }
            }
            body = ReqBody::Whole(bytes);
        }
        if tls && let Some(refused) = self.client_certificate(&policy.injection, port, &shown) {
            return refused;
        }
        let mut body_substitutions = Vec::new();
        for (rule, binding) in policy
            .injection
            .for_request(&self.host, port, tls, &method, &path)
        {
            let applied = match &self.egress.credentials {
                Some(store) => match store
                    .resolve(&self.flow.sandbox.id, &binding.source_ref)
                    .await
                {
                    Ok(values) => project(
                        binding,
                        &values,
                        RequestParts {
                            headers: &mut parts.headers,
                            path_and_query: &mut path,
                            body: &mut body_substitutions,
                        },
                    ),
                    Err(e) => Err(e.into()),
                },
                None => Err(ProjectionError::NoStore),
            };
            let rule_name = Some(rule.name.clone());
            match applied {
                Ok(()) => self.record(
                    true,
                    rule_name,
                    format!("credential {:?} injected into {shown}", binding.reference),
                ),
                Err(e) if rule.failure_policy == FailurePolicy::FailClosed => {
                    let reason = format!(
                        "credential {:?} could not be applied to {shown}: {e}; refused (failurePolicy fail-closed)",
                        binding.reference
                    );
                    self.record(false, rule_name, reason.clone());
                    return text(StatusCode::BAD_GATEWAY, reason);
                }
                Err(e) => self.record(
                    true,
                    rule_name,
                    format!(
                        "credential {:?} not applied to {shown}: {e}; sent without it (failurePolicy fail-open)",
                        binding.reference
                    ),
                ),
            }
        }
        let body = match body {
            ReqBody::Streaming(b) if body_substitutions.is_empty() => b.boxed(),
            whole => match whole
                .into_whole(MAX_SUBSTITUTED_BODY, "carrying a credential placeholder")
                .await
                .map(|b| substitute(b, &body_substitutions))
            {
                Ok(b) => {
                    parts.headers.remove(hyper::header::TRANSFER_ENCODING);
                    parts
                        .headers
                        .insert(hyper::header::CONTENT_LENGTH, b.len().into());
                    Full::new(b).map_err(|never| match never {}).boxed()
                }
                Err(reason) => {
                    self.record(false, None, reason.clone());
                    return text(StatusCode::PAYLOAD_TOO_LARGE, reason);
                }
            },
        };
        // With both, the chunked framing is what hyper read: a stale
        // Content-Length must not reach the upstream.
        if parts.headers.contains_key(hyper::header::TRANSFER_ENCODING) {
            parts.headers.remove(hyper::header::CONTENT_LENGTH);
        }
        strip_hop_by_hop(&mut parts.headers);
        let downstream = parts.version;
        match self.upstream.send(parts, path, port, body).await {
            Ok(mut resp) => {
                strip_hop_by_hop(resp.headers_mut());
                *resp.version_mut() = downstream;
                resp.map(|b| b.boxed())
            }
            Err(e) => {
                let reason = format!("upstream {target}: {e}");
                self.record(false, None, reason.clone());
                text(StatusCode::BAD_GATEWAY, reason)
            }
        }
    }
}

enum Sender {
    H1(client1::SendRequest<Body>),
    H2(client2::SendRequest<Body>),
}

/// An idle upstream connection and when it was last used.
struct Idle {
    since: Instant,
    sender: Sender,
}

type Pool = Arc<Mutex<Vec<Idle>>>;

/// The connections to one origin for one sandbox: one multiplexed HTTP/2
/// connection, or a few HTTP/1.1 ones.
struct Upstream {
    dial: Dial,
    host: String,
    tls: Option<Arc<ClientConfig>>,
    idle: Pool,
}

impl Upstream {
    async fn send(
        &self,
        mut parts: hyper::http::request::Parts,
        path: String,
        port: u16,
        body: Body,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let sender = self.sender().await?;
        let default_port = if self.tls.is_some() { 443 } else { 80 };
        let authority = if port == default_port {
            self.host.clone()
        } else {
            format!("{}:{port}", self.host)
        };
        match sender {
            Sender::H2(mut s) => {
                parts.headers.remove(HOST);
                parts.version = Version::HTTP_2;
                parts.uri = format!("https://{authority}{path}")
                    .parse()
                    .map_err(|_| UpstreamError::Path)?;
                let resp = s.send_request(Request::from_parts(parts, body)).await;
                self.give_back(Sender::H2(s));
                Ok(resp?)
            }
            Sender::H1(mut s) => {
                parts.version = Version::HTTP_11;
                parts.uri = path.parse().map_err(|_| UpstreamError::Path)?;
                parts
                    .headers
                    .insert(HOST, authority.parse().map_err(|_| UpstreamError::Host)?);
                let resp = s.send_request(Request::from_parts(parts, body)).await;
                self.give_back(Sender::H1(s));
                Ok(resp?)
            }
        }
    }

    /// A connection that can take a request now, or a new one.
    async fn sender(&self) -> Result<Sender, UpstreamError> {
        {
            let mut idle = self.idle.lock().expect("lock poisoned");
            idle.retain(|i| {
                i.since.elapsed() < UPSTREAM_IDLE
                    && match &i.sender {
                        Sender::H1(s) => !s.is_closed(),
                        Sender::H2(s) => !s.is_closed(),
                    }
            });
            let ready = idle.iter().position(|i| match &i.sender {
                Sender::H1(s) => s.is_ready(),
                Sender::H2(s) => s.is_ready(),
            });
            if let Some(i) = ready {
                return Ok(match idle.swap_remove(i).sender {
                    Sender::H2(s) => {
                        // HTTP/2 is shared: leave a handle for others.
                        idle.push(Idle {
                            since: Instant::now(),
                            sender: Sender::H2(s.clone()),
                        });
                        Sender::H2(s)
                    }
                    h1 => h1,
                });
            }
        }
        self.dial().await
    }

    fn give_back(&self, s: Sender) {
        let mut idle = self.idle.lock().expect("lock poisoned");
        let h2_held = idle.iter().any(|i| matches!(i.sender, Sender::H2(_)));
        let keep = match s {
            Sender::H1(_) => idle.len() < MAX_IDLE_UPSTREAM,
            // A new HTTP/2 connection is shared from now on.
            Sender::H2(_) => !h2_held,
        };
        if keep {
            idle.push(Idle {
                since: Instant::now(),
                sender: s,
            });
        }
    }

    async fn dial(&self) -> Result<Sender, UpstreamError> {
        let tcp = self.dial.connect().await?;
        // rustls reads a few KiB per call: buffering here turns a read
        // syscall per TLS record into one per quarter MiB.
        let tcp = tokio::io::BufReader::with_capacity(UPSTREAM_READ_BUF, tcp);
        let Some(cfg) = &self.tls else {
            return handshake1(TokioIo::new(tcp)).await;
        };
        let name = ServerName::try_from(self.host.clone())
            .map_err(|_| UpstreamError::ServerName(self.host.clone()))?;
        let tls = tokio_rustls::TlsConnector::from(cfg.clone())
            .connect(name, tcp)
            .await
            .map_err(UpstreamError::Verify)?;
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (s, conn) = client2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            Ok(Sender::H2(s))
        } else {
            handshake1(TokioIo::new(tls)).await
        }
    }
}

async fn handshake1<I>(io: TokioIo<I>) -> Result<Sender, UpstreamError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (s, conn) = client1::handshake(io).await?;
    tokio::spawn(conn);
    Ok(Sender::H1(s))
}

/// A request body: as it streams in, or read whole (to inspect or change).
enum ReqBody {
    Streaming(Incoming),
    Whole(Bytes),
}

impl ReqBody {
    /// The whole body, read if need be (at most `limit` bytes); the error
    /// says what it was read for (`why`).
    async fn into_whole(self, limit: usize, why: &str) -> Result<Bytes, String> {
        match self {
            ReqBody::Whole(b) => Ok(b),
            ReqBody::Streaming(body) => Ok(http_body_util::Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| {
                    format!(
                        "a request body {why} could not be read whole (at most {limit} bytes): {e}"
                    )
                })?
                .to_bytes()),
        }
    }
}

/// The body with each placeholder replaced by its value.
fn substitute(body: Bytes, subs: &[(String, String)]) -> Bytes {
    if subs.is_empty() {
        return body;
    }
    let mut out = body.to_vec();
    for (placeholder, value) in subs {
        out = replace_all(&out, placeholder.as_bytes(), value.as_bytes());
    }
    Bytes::from(out)
}

/// A JSON-RPC error answering request `id`, as an MCP server's own would
/// be: the client reports `reason` as the call's error.
fn json_rpc_error(id: serde_json::Value, reason: &str) -> Response<Body> {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": id,
        "error": {"code": -32001, "message": format!("sandstone egress: {reason}")}});
    let mut r = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    r.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("static value"),
    );
    r
}

/// Placeholders are at least 8 bytes long (checked with the policy).
fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(i) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(to);
        rest = &rest[i + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_come_off_names_and_bracketed_addresses_only() {
        use super::without_port;
        assert_eq!(without_port("git.test:443"), "git.test");
        assert_eq!(without_port("git.test"), "git.test");
        assert_eq!(without_port("[::1]:443"), "[::1]");
        assert_eq!(without_port("::1"), "::1");
        assert_eq!(without_port("host:"), "host:");
    }
}
