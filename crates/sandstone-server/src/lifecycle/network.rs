//! Sandbox networking: a /30 per slot from the egress pool, a veth per
//! sandbox (made by the spawn helper) and this daemon's host firewall.

use crate::error::{ApiError, ApiResult};
use sandstone_egress::addr::SubnetPool;
use sandstone_egress::firewall::Firewall;
use sandstone_runtime::net::NetSpec;
use std::net::IpAddr;

/// Default ports of the egress proxy and the policy resolver on each
/// sandbox's gateway address.
const PROXY_PORT: u16 = 15001;
const DNS_PORT: u16 = 15053;

#[derive(Debug, Clone)]
pub struct Network {
    pool: SubnetPool,
    pub firewall: Firewall,
}

/// The host's own addresses (the pool must not overlap them).
fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifa: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut ifa) } != 0 {
        return out;
    }
    let mut cur = ifa;
    while !cur.is_null() {
        let a = unsafe { &*cur };
        if !a.ifa_addr.is_null() && unsafe { (*a.ifa_addr).sa_family } as i32 == libc::AF_INET {
            let sin = unsafe { &*(a.ifa_addr as *const libc::sockaddr_in) };
            out.push(IpAddr::V4(u32::from_be(sin.sin_addr.s_addr).into()));
        }
        cur = a.ifa_next;
    }
    unsafe { libc::freeifaddrs(ifa) };
    out
}

impl Network {
    /// Validates the pool and installs this daemon's firewall table
    /// (replacing one a crashed daemon left).
    pub fn install(pool: &str, group: &str) -> anyhow::Result<Network> {
        let hash = group.trim_start_matches("sandstone-");
        let pool = SubnetPool::new(pool, &host_addresses())
            .map_err(|e| anyhow::anyhow!("egress pool: {e}"))?;
        let firewall = Firewall {
            table: format!("sandstone_{hash}"),
            prefix: format!("s{}x", &hash[..4.min(hash.len())]),
            proxy_port: PROXY_PORT,
            dns_port: DNS_PORT,
        };
        firewall.install().map_err(|e| anyhow::anyhow!(e))?;
        tracing::info!(pool = %pool.cidr(), table = %firewall.table, "sandbox networking on: veth per sandbox, host firewall installed");
        Ok(Network { pool, firewall })
    }

    /// The interface and addresses of `slot`.
    pub fn spec(&self, slot: i64) -> ApiResult<NetSpec> {
        let (gateway, address) = self.pool.pair(slot as u32).ok_or_else(|| {
            ApiError::internal(format!(
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
}
