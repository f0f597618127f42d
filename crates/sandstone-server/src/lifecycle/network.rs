//! Sandbox networking: a /30 per slot from the egress pool, a veth per
//! sandbox (made by the spawn helper), this daemon's host firewall, and the
//! egress proxy and policy resolver the firewall sends sandbox traffic to.

use super::{Error, Result};
use futures_util::future::BoxFuture;
use sandstone_agents::vaults;
use sandstone_api::CredentialSourceKind;
use sandstone_db::agents::AgentsStore;
use sandstone_db::secrets::Sealer;
use sandstone_db::{AuditRow, Store};
use sandstone_egress::addr::SubnetPool;
use sandstone_egress::audit::{AuditEvent, AuditSink, Verdict};
use sandstone_egress::ca::{InstallationCa, SANDBOX_BUNDLE, TRUST_ENV};
use sandstone_egress::cidr::CidrError;
use sandstone_egress::credentials::{CredentialStore, SourceError, SourceValues};
use sandstone_egress::firewall::Firewall;
use sandstone_egress::intercept::Interceptor;
use sandstone_egress::ssh_proxy::{SANDBOX_KNOWN_HOSTS, SshIdentity};
use sandstone_egress::state::Egress;
use sandstone_egress::{NetworkPolicy, OperatorRules};
use sandstone_runtime::net::NetSpec;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

pub struct Network {
    pool: SubnetPool,
    pub firewall: Firewall,
    pub egress: Arc<Egress>,
    pub ca: InstallationCa,
    pub ssh: Arc<SshIdentity>,
}

/// The host's own IPv4 addresses, with their interfaces' names (the pool
/// must not overlap them, except where they are this daemon's own
/// sandboxes' host ends).
pub(crate) fn host_addresses() -> Vec<(String, IpAddr)> {
    // Unreadable: no addresses to keep clear of, as before.
    sandstone_sys::net::ipv4_addresses()
        .unwrap_or_default()
        .into_iter()
        .map(|(name, ip)| (name, IpAddr::V4(ip)))
        .collect()
}

/// The host's resolver (first `nameserver` of /etc/resolv.conf).
pub fn host_resolver() -> Option<SocketAddr> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    conf.lines().find_map(|l| {
        let ip: IpAddr = l.strip_prefix("nameserver")?.trim().parse().ok()?;
        Some(SocketAddr::new(ip, 53))
    })
}

/// Audit records go to the store in batches, off the connection's path.
struct StoreSink {
    tx: mpsc::UnboundedSender<AuditEvent>,
}

impl AuditSink for StoreSink {
    fn record(&self, event: AuditEvent) {
        tracing::debug!(sandbox = %event.sandbox_id, decision = %event.decision, reason = %event.reason, "egress");
        let _ = self.tx.send(event);
    }
}

fn spawn_audit_writer(store: Arc<dyn Store>) -> StoreSink {
    let (tx, mut rx) = mpsc::unbounded_channel::<AuditEvent>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < 256
                && let Ok(e) = rx.try_recv()
            {
                batch.push(e);
            }
            let rows: Vec<AuditRow> = batch
                .into_iter()
                .map(|e| AuditRow {
                    sandbox_id: e.sandbox_id.clone(),
                    time: e.time,
                    denied: e.decision == Verdict::Deny,
                    event: serde_json::to_value(&e).unwrap_or_default(),
                })
                .collect();
            if let Err(e) = store.insert_audit(&rows).await {
                tracing::error!(error = %e, lost = rows.len(), "could not store audit records");
            }
        }
    });
    StoreSink { tx }
}

/// A sandbox's effective policy: the template's (`block-all` when it has
/// none) with the claim's merged over it (the claim's mode wins when it
/// sets one; rules merge by name). Bad fields are a 400 naming them.
pub fn policy_of(
    template: &sandstone_volumes::Template,
    config: &sandstone_api::SandboxConfig,
) -> Result<NetworkPolicy> {
    let base = match &template.network {
        Some(v) => parse_policy(v.clone(), "template.network")?,
        None => NetworkPolicy::default(),
    };
    let Some(v) = &config.network else {
        return Ok(base);
    };
    let claim = parse_policy(v.clone(), "config.network")?;
    Ok(NetworkPolicy::merged(
        &base,
        &claim,
        v.get("mode").is_some(),
    ))
}

/// Parses and checks a policy; presets come back expanded, so what the API
/// shows is what is enforced.
pub fn parse_policy(v: serde_json::Value, field: &str) -> Result<NetworkPolicy> {
    let mut p: NetworkPolicy = serde_path_to_error::deserialize(v).map_err(|e| {
        Error::Invalid(format!(
            "invalid field `{field}.{}`: {}",
            e.path(),
            crate::extract::decode_problem(e.inner())
        ))
    })?;
    p.compile().map_err(|e| {
        Error::Invalid(format!(
            "invalid field `{field}.{}`: {}",
            e.field, e.problem
        ))
    })?;
    p.expand();
    Ok(p)
}

/// The operator's egress rules file (`sandstone serve --egress-config`):
/// exceptions and additions to the built-in denials, and CAs trusted for
/// upstreams the proxy re-originates TLS to. Sandboxes cannot change it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperatorConfig {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub deny_domains: Vec<String>,
    #[serde(default)]
    pub upstream_ca_files: Vec<PathBuf>,
}

impl OperatorConfig {
    pub fn load(path: &Path) -> anyhow::Result<OperatorConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("egress config {}: {e}", path.display()))?;
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(&text)).map_err(
            |e| {
                anyhow::anyhow!(
                    "egress config {}: {}: {}",
                    path.display(),
                    e.path(),
                    e.inner()
                )
            },
        )
    }

    /// This file's rules for the control plane's own outbound calls (MCP
    /// servers, token endpoints): only what the operator wrote, since the
    /// built-in denials (loopback, the host) protect the host from
    /// sandboxes, not from its own daemon.
    pub fn outbound(&self) -> anyhow::Result<sandstone_agents::Outbound> {
        Ok(guard(OperatorRules {
            allow: self.cidrs(&self.allow, "allow")?,
            deny: self.cidrs(&self.deny, "deny")?,
            deny_domains: self.deny_domains.clone(),
            host_addresses: None,
        }))
    }

    /// The rules for calls an API caller points the daemon at (webhooks):
    /// a caller is no more trusted than a sandbox, so the built-in
    /// denials hold (loopback, link-local with the metadata address, the
    /// host's own addresses, the sandbox `pool`), with this file's rules
    /// and its `allow` as the exceptions.
    pub fn callers_outbound(
        &self,
        pool: Option<&str>,
    ) -> anyhow::Result<sandstone_agents::Outbound> {
        let mut rules = self.rules()?;
        if let Some(pool) = pool {
            rules.deny.push(
                pool.parse()
                    .map_err(|e: CidrError| anyhow::anyhow!("egress pool: {e}"))?,
            );
        }
        Ok(guard(rules))
    }

    fn cidrs(
        &self,
        list: &[String],
        field: &str,
    ) -> anyhow::Result<Vec<sandstone_egress::cidr::Cidr>> {
        list.iter()
            .map(|c| {
                c.parse()
                    .map_err(|e: CidrError| anyhow::anyhow!("egress config {field}: {e}"))
            })
            .collect()
    }

    /// The built-in rules with this file's added.
    fn rules(&self) -> anyhow::Result<OperatorRules> {
        let mut rules = OperatorRules {
            allow: self.cidrs(&self.allow, "allow")?,
            deny_domains: self.deny_domains.clone(),
            ..Default::default()
        };
        // Added to the built-in denials, never replacing them.
        rules.deny.extend(self.cidrs(&self.deny, "deny")?);
        Ok(rules)
    }
}

fn guard(rules: OperatorRules) -> sandstone_agents::Outbound {
    Arc::new(move |host: &str, ip: IpAddr| rules.denies(host, ip).map_or(Ok(()), Err))
}

/// What `Network::start` needs from the daemon's configuration.
pub struct NetworkOptions<'a> {
    pub pool: &'a str,
    pub group: &'a str,
    pub upstream_dns: SocketAddr,
    pub ca_dir: &'a Path,
    pub operator: OperatorConfig,
}

/// Credential sources for the proxy: read from the store and unsealed on
/// each use, so rotations and deletions apply to the next request. A
/// source named `vault:…` or `resource:…` is the Managed Agents control
/// plane's (a vault credential, a session repository's token).
struct SealedSources {
    store: Arc<dyn Store>,
    /// Each sandbox's team, read once (it never changes).
    teams: std::sync::Mutex<std::collections::HashMap<String, String>>,
    vaults: Arc<dyn AgentsStore>,
    sealer: Arc<Sealer>,
}

impl CredentialStore for SealedSources {
    fn resolve<'a>(
        &'a self,
        sandbox: &'a str,
        source: &'a str,
    ) -> BoxFuture<'a, std::result::Result<SourceValues, SourceError>> {
        Box::pin(async move {
            if vaults::owns(source) {
                return match vaults::resolve(&*self.vaults, &self.sealer, source).await {
                    Ok(values) => Ok(SourceValues {
                        kind: CredentialSourceKind::StaticHeaders,
                        values,
                    }),
                    Err(vaults::ResolveError::Sealed(_)) => {
                        Err(SourceError::Sealed(source.to_string()))
                    }
                    Err(e) => {
                        tracing::info!(source, error = %e, "control-plane credential not applied");
                        Err(SourceError::Missing(source.to_string()))
                    }
                };
            }
            let missing = || SourceError::Missing(source.to_string());
            let teams = || self.teams.lock().expect("lock poisoned: a holder panicked");
            let known = teams().get(sandbox).cloned();
            let team = match known {
                Some(t) => t,
                None => {
                    let team = self
                        .store
                        .get_sandbox(sandbox)
                        .await
                        .map_err(|_| missing())?
                        .team_id;
                    teams().insert(sandbox.to_string(), team.clone());
                    team
                }
            };
            let row = self
                .store
                .get_credential(&team, source)
                .await
                .map_err(|_| missing())?;
            let plain = self
                .sealer
                .open(&row.sealed)
                .ok_or_else(|| SourceError::Sealed(source.to_string()))?;
            let malformed = || SourceError::Malformed(source.to_string());
            let kind = CredentialSourceKind::parse(&row.kind).ok_or_else(malformed)?;
            let values = serde_json::from_slice(&plain).map_err(|_| malformed())?;
            Ok(SourceValues { kind, values })
        })
    }
}

/// This daemon's nftables table and host interface prefix, from its group.
fn names(group: &str) -> (String, String) {
    let hash = group.trim_start_matches("sandstone-");
    (
        format!("sandstone_{hash}"),
        format!("s{}x", &hash[..4.min(hash.len())]),
    )
}

/// For a daemon started without networking: its sandboxes that a networked
/// run left running lose their interfaces (deleting the host end of a veth
/// deletes the pair), so they keep only loopback, like every sandbox of
/// this run, rather than reach the host unfiltered; then the firewall
/// table goes. `slots` are the slots this daemon's database records.
pub fn remove_leftovers(group: &str, slots: &[i64]) -> anyhow::Result<()> {
    let (table, prefix) = names(group);
    for slot in slots {
        let name = format!("{prefix}{slot}");
        match sandstone_runtime::net::remove_host_end(&name) {
            Ok(true) => tracing::warn!(
                interface = %name,
                "networking is off: a sandbox's interface was removed (it keeps loopback only until it is restarted by a networked daemon)"
            ),
            Ok(false) => {}
            Err(e) => anyhow::bail!(
                "networking is off but the sandbox interface {name} cannot be removed: {e}"
            ),
        }
    }
    let firewall = Firewall {
        table,
        prefix,
        proxy_port: 0,
        dns_port: 0,
    };
    firewall.remove().map_err(|e| anyhow::anyhow!(e))
}

impl Network {
    /// Validates the pool, starts the proxy and the resolver, and installs
    /// this daemon's firewall table (replacing one a crashed daemon left).
    pub async fn start(
        o: NetworkOptions<'_>,
        store: Arc<dyn Store>,
        vaults: Arc<dyn AgentsStore>,
        sealer: Arc<Sealer>,
    ) -> anyhow::Result<Network> {
        let ca = InstallationCa::load_or_create(o.ca_dir)
            .map_err(|e| anyhow::anyhow!("installation CA: {e}"))?;
        let interceptor = Interceptor::new(&ca, &o.operator.upstream_ca_files)
            .map_err(|e| anyhow::anyhow!("TLS interception: {e}"))?;
        let ssh = Arc::new(
            SshIdentity::load_or_create(o.ca_dir)
                .map_err(|e| anyhow::anyhow!("SSH identity: {e}"))?,
        );
        let (table, prefix) = names(o.group);
        let pool = SubnetPool::parse(o.pool).map_err(|e| anyhow::anyhow!("egress pool: {e}"))?;
        // The host ends of sandboxes this daemon left running are its own
        // (named by its prefix, holding their slot's gateway): a restart
        // re-adopts them on the same subnets.
        let foreign: Vec<IpAddr> = host_addresses()
            .into_iter()
            .filter(|(ifname, ip)| !pool.is_host_end(&prefix, ifname, *ip))
            .map(|(_, ip)| ip)
            .collect();
        pool.check_host(&foreign)
            .map_err(|e| anyhow::anyhow!("egress pool: {e}"))?;
        let proxy = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
        let dns = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
        let firewall = Firewall {
            table,
            prefix,
            proxy_port: proxy.local_addr()?.port(),
            dns_port: dns.local_addr()?.port(),
        };
        firewall.install().map_err(|e| anyhow::anyhow!(e))?;
        // The host's own addresses are judged when dialled (the operator
        // rules' default), so one added later is denied too.
        let mut operator = o.operator.rules()?;
        operator.deny.push(
            pool.cidr()
                .parse()
                .map_err(|e: CidrError| anyhow::anyhow!(e))?,
        );
        let mut egress = Egress::new(
            operator,
            Arc::new(spawn_audit_writer(store.clone())),
            o.upstream_dns,
        );
        egress.interceptor = Some(interceptor);
        egress.ssh = Some(ssh.clone());
        egress.credentials = Some(Arc::new(SealedSources {
            store,
            teams: Default::default(),
            vaults,
            sealer,
        }));
        let egress = Arc::new(egress);
        let upstream_dns = o.upstream_dns;
        tokio::spawn(sandstone_egress::proxy::serve(proxy, egress.clone()));
        tokio::spawn(sandstone_egress::dns::serve(dns, egress.clone()));
        sandstone_egress::drops::spawn(egress.clone(), firewall.prefix.clone());
        tracing::info!(
            pool = %pool.cidr(), table = %firewall.table, proxy = firewall.proxy_port, resolver = firewall.dns_port,
            upstream = %upstream_dns, "egress on: veth per sandbox, firewall, proxy and policy resolver"
        );
        Ok(Network {
            pool,
            firewall,
            egress,
            ca,
            ssh,
        })
    }

    /// How many sandboxes the pool has subnets for.
    pub fn capacity(&self) -> u32 {
        self.pool.capacity()
    }

    /// The interface and addresses of `slot`.
    pub fn spec(&self, slot: i64) -> Result<NetSpec> {
        let (gateway, address) = self.pool.pair(slot as u32).ok_or_else(|| {
            Error::Internal(format!(
                "egress pool {} has no room for slot {slot}",
                self.pool.cidr()
            ))
        })?;
        Ok(NetSpec {
            host_if: format!("{}{slot}", self.firewall.prefix),
            gateway,
            address,
            prefix: 30,
        })
    }

    /// The CA bundle, and the known_hosts line trusting the SSH CA (which
    /// signs the proxy's host certificates), read-only inside every
    /// sandbox.
    pub fn trust_binds(&self) -> [sandstone_runtime::BindMount; 2] {
        let bind = |source: &Path, target: &str| sandstone_runtime::BindMount {
            source: source.to_path_buf(),
            target: target.into(),
            read_only: true,
            idmap: false,
        };
        [
            bind(&self.ca.bundle, SANDBOX_BUNDLE),
            bind(&self.ssh.known_hosts, SANDBOX_KNOWN_HOSTS),
        ]
    }

    /// Variables pointing common tools (OpenSSL, curl, git, pip, Python
    /// requests, Node) at the bundle.
    pub fn trust_env(&self) -> std::collections::BTreeMap<String, String> {
        TRUST_ENV
            .iter()
            .map(|k| (k.to_string(), SANDBOX_BUNDLE.to_string()))
            .collect()
    }

    /// Starts enforcing `policy` for the sandbox in `slot`.
    pub fn register(&self, slot: i64, id: &str, policy: &NetworkPolicy) -> Result<()> {
        let spec = self.spec(slot)?;
        self.egress
            .register(spec.address, id, policy)
            .map_err(|e| Error::Invalid(e.to_string()))
    }
}
