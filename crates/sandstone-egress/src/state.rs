//! What the proxy and the resolver know: which sandbox owns a source
//! address, its current policy (swapped atomically on update, so new
//! connections see a change at once), and the names its DNS answers gave.

use crate::audit::AuditSink;
use crate::policy::{CompiledPolicy, NetworkPolicy, OperatorRules, PolicyError};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Names remembered per sandbox, for matching opaque TCP to domains.
const NAME_CACHE: usize = 4096;
/// Connections one sandbox may hold open through the proxy at once: a
/// sandbox must not be able to use up the daemon's descriptors.
pub const MAX_CONNECTIONS: usize = 1024;
/// DNS questions of one sandbox being forwarded at once.
pub const MAX_DNS_IN_FLIGHT: usize = 128;
/// Destinations counted apart per sandbox (for /metrics); the rest are
/// counted together as `other`, so a sandbox cannot grow the page
/// without bound.
pub const MAX_DESTINATIONS: usize = 64;

/// Per-sandbox egress counters, for /metrics.
#[derive(Default)]
pub struct Counters {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub dns: AtomicU64,
}

pub struct SandboxNet {
    pub id: String,
    pub counters: Counters,
    /// The policy's `egress.bandwidth`, for every connection at once.
    pub bandwidth: crate::bandwidth::Bandwidth,
    pub connections: Arc<tokio::sync::Semaphore>,
    pub dns_in_flight: Arc<tokio::sync::Semaphore>,
    policy: RwLock<Arc<CompiledPolicy>>,
    names: Mutex<HashMap<IpAddr, String>>,
    /// Bytes (up, down) by destination (`host:port`, or the address).
    destinations: Mutex<HashMap<String, (u64, u64)>>,
}

impl SandboxNet {
    pub fn policy(&self) -> Arc<CompiledPolicy> {
        self.policy.read().expect("lock poisoned").clone()
    }

    pub fn remember(&self, ip: IpAddr, name: &str) {
        let mut n = self.names.lock().expect("lock poisoned");
        if n.len() >= NAME_CACHE {
            n.clear();
        }
        n.insert(ip, name.to_string());
    }

    /// Adds a finished connection's bytes to its destination's.
    pub fn count_destination(&self, dest: String, up: u64, down: u64) {
        let mut d = self.destinations.lock().expect("lock poisoned");
        let full = d.len() >= MAX_DESTINATIONS && !d.contains_key(&dest);
        let slot = d
            .entry(if full { "other".into() } else { dest })
            .or_default();
        slot.0 += up;
        slot.1 += down;
    }

    pub fn name_of(&self, ip: IpAddr) -> Option<String> {
        self.names.lock().expect("lock poisoned").get(&ip).cloned()
    }
}

pub struct Egress {
    by_addr: RwLock<HashMap<Ipv4Addr, Arc<SandboxNet>>>,
    pub operator: OperatorRules,
    pub audit: Arc<dyn AuditSink>,
    /// Where allowed DNS questions are forwarded.
    pub upstream_dns: SocketAddr,
    pub dns_cache: crate::dns::Cache,
    /// Terminates TLS where credential rules apply (absent: no injection).
    pub interceptor: Option<crate::intercept::Interceptor>,
    pub credentials: Option<Arc<dyn crate::credentials::CredentialStore>>,
    /// Answers SSH as the hosts `ssh_proxy` bindings name (absent: such
    /// connections are refused).
    pub ssh: Option<Arc<crate::ssh_proxy::SshIdentity>>,
}

impl Egress {
    pub fn new(
        operator: OperatorRules,
        audit: Arc<dyn AuditSink>,
        upstream_dns: SocketAddr,
    ) -> Egress {
        Egress {
            by_addr: RwLock::new(HashMap::new()),
            operator,
            audit,
            upstream_dns,
            dns_cache: crate::dns::Cache::default(),
            interceptor: None,
            credentials: None,
            ssh: None,
        }
    }

    /// Starts enforcing `policy` for the sandbox at `addr`.
    pub fn register(
        &self,
        addr: Ipv4Addr,
        id: &str,
        policy: &NetworkPolicy,
    ) -> Result<(), PolicyError> {
        let compiled = Arc::new(policy.compile()?);
        let net = Arc::new(SandboxNet {
            id: id.to_string(),
            counters: Counters::default(),
            bandwidth: Default::default(),
            connections: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            dns_in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_DNS_IN_FLIGHT)),
            policy: RwLock::new(compiled),
            names: Mutex::new(HashMap::new()),
            destinations: Mutex::new(HashMap::new()),
        });
        net.bandwidth.set(net.policy().policy.egress.bandwidth);
        self.by_addr
            .write()
            .expect("lock poisoned")
            .insert(addr, net);
        Ok(())
    }

    /// Stops serving sandbox `id` (its runtime ended).
    pub fn unregister(&self, id: &str) {
        self.by_addr
            .write()
            .expect("lock poisoned")
            .retain(|_, net| net.id != id);
    }

    /// Replaces a sandbox's policy; connections opened afterwards use it
    /// (and open ones its bandwidth).
    pub fn set_policy(&self, id: &str, policy: &NetworkPolicy) -> Result<(), PolicyError> {
        let compiled = Arc::new(policy.compile()?);
        for net in self.by_addr.read().expect("lock poisoned").values() {
            if net.id == id {
                net.bandwidth.set(compiled.policy.egress.bandwidth);
                *net.policy.write().expect("lock poisoned") = compiled.clone();
            }
        }
        Ok(())
    }

    /// Prometheus lines of every served sandbox's counters.
    /// The per-sandbox counters in Prometheus' text format, for the
    /// sandboxes `shown` admits.
    pub fn render_metrics(&self, shown: impl Fn(&str) -> bool) -> String {
        type Read = fn(&Counters) -> &AtomicU64;
        let series: [(&str, &str, Read); 5] = [
            (
                "sandstone_egress_connections_total",
                ",decision=\"allow\"",
                |c| &c.allowed,
            ),
            (
                "sandstone_egress_connections_total",
                ",decision=\"deny\"",
                |c| &c.denied,
            ),
            ("sandstone_egress_bytes_total", ",direction=\"up\"", |c| {
                &c.bytes_up
            }),
            ("sandstone_egress_bytes_total", ",direction=\"down\"", |c| {
                &c.bytes_down
            }),
            ("sandstone_egress_dns_queries_total", "", |c| &c.dns),
        ];
        let nets: Vec<_> = self
            .by_addr
            .read()
            .expect("lock poisoned")
            .values()
            .filter(|n| shown(&n.id))
            .cloned()
            .collect();
        let mut s = String::new();
        let mut last = "";
        for (name, label, read) in series {
            if name != last {
                s += &format!("# TYPE {name} counter\n");
                last = name;
            }
            for n in &nets {
                let v = read(&n.counters).load(Ordering::Relaxed);
                s += &format!("{name}{{sandbox=\"{}\"{label}}} {v}\n", n.id);
            }
        }
        s += "# TYPE sandstone_egress_destination_bytes_total counter\n";
        for n in &nets {
            let mut dests: Vec<_> = n
                .destinations
                .lock()
                .expect("lock poisoned")
                .iter()
                .map(|(d, b)| (d.clone(), *b))
                .collect();
            dests.sort();
            for (dest, (up, down)) in dests {
                // A name is a sandbox's to choose: only what a label may hold.
                let dest: String = dest
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || "-._:[]".contains(*c))
                    .collect();
                for (direction, v) in [("up", up), ("down", down)] {
                    s += &format!(
                        "sandstone_egress_destination_bytes_total{{sandbox=\"{}\",destination=\"{dest}\",direction=\"{direction}\"}} {v}\n",
                        n.id
                    );
                }
            }
        }
        s
    }

    /// Bytes sandbox `id` sent and received through the proxy since its
    /// runtime registered (`None`: not served now).
    pub fn bytes_of(&self, id: &str) -> Option<(u64, u64)> {
        let nets = self.by_addr.read().expect("lock poisoned");
        let net = nets.values().find(|n| n.id == id)?;
        let c = &net.counters;
        Some((
            c.bytes_up.load(Ordering::Relaxed),
            c.bytes_down.load(Ordering::Relaxed),
        ))
    }

    pub fn sandbox(&self, addr: IpAddr) -> Option<Arc<SandboxNet>> {
        let IpAddr::V4(v4) = addr else { return None };
        self.by_addr
            .read()
            .expect("lock poisoned")
            .get(&v4)
            .cloned()
    }
}
