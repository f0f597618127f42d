//! The operator's hold on calls the daemon itself makes to addresses
//! someone else named (MCP servers, OAuth token endpoints, webhooks): a
//! name is judged as it is resolved, so the connection can go nowhere the
//! check did not see, and an address in a URL is judged before the call.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The operator's verdict on one outbound connection: the host as named
/// and an address it resolved to; an error says which rule denied it.
pub type Outbound = Arc<dyn Fn(&str, IpAddr) -> Result<(), String> + Send + Sync>;

/// A connection the operator's rules deny (found in a `reqwest` error's
/// sources when the resolver refused every address).
#[derive(Debug, thiserror::Error)]
#[error("{host}: the operator's egress rules deny it ({rule})")]
pub struct Denied {
    pub host: String,
    pub rule: String,
}

/// A resolver for `reqwest` that keeps only the addresses `Outbound`
/// allows (the check and the dial see the same addresses).
pub struct Guarded(pub Outbound);

impl reqwest::dns::Resolve for Guarded {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let check = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut denied = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match check(&host, a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        denied = Some(e);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let rule = denied.unwrap_or_else(|| "no address".into());
                return Err(Box::new(Denied { host, rule }) as _);
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// The verdict on `url` when it names an address (a name is judged as
/// it is resolved, by [`Guarded`]).
pub fn check_url(check: &Outbound, url: &str) -> Result<(), Denied> {
    let host = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
        .unwrap_or_default();
    match host.parse::<IpAddr>() {
        Ok(ip) => check(&host, ip).map_err(|rule| Denied { host, rule }),
        Err(_) => Ok(()),
    }
}
