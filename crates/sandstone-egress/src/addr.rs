//! Sandbox subnets: one /30 per sandbox slot, carved from a private pool.

use crate::cidr::Cidr;
use std::net::{IpAddr, Ipv4Addr};

/// Why a subnet pool cannot be used; the CIDR is quoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("{0:?} is not a CIDR")]
    NotCidr(String),
    #[error("{0:?} is not an IPv4 CIDR")]
    NotIpv4(String),
    #[error("prefix must be 8..29")]
    Prefix,
    #[error("the pool must not overlap 192.0.2.0/24")]
    Uplink,
    #[error("the pool overlaps the host address {0}")]
    HostOverlap(IpAddr),
}

#[derive(Debug, Clone, Copy)]
pub struct SubnetPool {
    base: u32,
    prefix: u8,
}

impl SubnetPool {
    /// A pool such as `10.200.0.0/14`. Refuses 192.0.2.0/24 (this
    /// workplace's uplink) and any range that overlaps `host` addresses.
    pub fn new(cidr: &str, host: &[IpAddr]) -> Result<SubnetPool, PoolError> {
        let pool = Self::parse(cidr)?;
        pool.check_host(host)?;
        Ok(pool)
    }

    /// The pool `cidr` names, not yet checked against the host's addresses.
    pub fn parse(cidr: &str) -> Result<SubnetPool, PoolError> {
        let (addr, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| PoolError::NotCidr(cidr.to_string()))?;
        let base: Ipv4Addr = addr
            .parse()
            .map_err(|_| PoolError::NotIpv4(cidr.to_string()))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=29).contains(p))
            .ok_or(PoolError::Prefix)?;
        let pool = SubnetPool {
            base: u32::from(base) & (u32::MAX << (32 - prefix)),
            prefix,
        };
        let uplink: Cidr = "192.0.2.0/24".parse().expect("constant");
        if pool
            .whole()
            .contains(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
            || uplink.contains(IpAddr::V4(base))
        {
            return Err(PoolError::Uplink);
        }
        Ok(pool)
    }

    /// Refuses a pool that overlaps any of `host`'s addresses (leave out
    /// the host ends of the pool's own sandboxes: see
    /// [`SubnetPool::is_host_end`]).
    pub fn check_host(&self, host: &[IpAddr]) -> Result<(), PoolError> {
        match host.iter().find(|ip| self.whole().contains(**ip)) {
            Some(ip) => Err(PoolError::HostOverlap(*ip)),
            None => Ok(()),
        }
    }

    /// Whether `ip` on interface `ifname` is the host end of one of this
    /// pool's sandboxes: the interface is named `<prefix><slot>` (the
    /// daemon's prefix) and holds exactly that slot's gateway address.
    pub fn is_host_end(&self, prefix: &str, ifname: &str, ip: IpAddr) -> bool {
        let slot = ifname
            .strip_prefix(prefix)
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u32>().ok());
        slot.and_then(|s| self.pair(s))
            .is_some_and(|(gateway, _)| IpAddr::V4(gateway) == ip)
    }

    fn whole(&self) -> Cidr {
        self.cidr().parse().expect("a pool is a valid CIDR")
    }

    pub fn capacity(&self) -> u32 {
        1 << (32 - self.prefix - 2)
    }

    /// (gateway, sandbox address) of `slot`'s /30.
    pub fn pair(&self, slot: u32) -> Option<(Ipv4Addr, Ipv4Addr)> {
        (slot < self.capacity()).then(|| {
            let net = self.base + slot * 4;
            (Ipv4Addr::from(net + 1), Ipv4Addr::from(net + 2))
        })
    }

    pub fn cidr(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_get_disjoint_slash_30s() {
        let p = SubnetPool::new("10.200.0.0/14", &[]).unwrap();
        assert_eq!(p.capacity(), 65536);
        assert_eq!(
            p.pair(0),
            Some(("10.200.0.1".parse().unwrap(), "10.200.0.2".parse().unwrap()))
        );
        assert_eq!(
            p.pair(64),
            Some(("10.200.1.1".parse().unwrap(), "10.200.1.2".parse().unwrap()))
        );
        assert_eq!(p.pair(65536), None);
        assert!(SubnetPool::new("192.0.0.0/16", &[]).is_err());
        assert!(SubnetPool::new("10.0.0.0/8", &["10.1.2.3".parse().unwrap()]).is_err());
        assert!(SubnetPool::new("10.0.0.0/4", &[]).is_err());
    }

    #[test]
    fn a_pools_own_host_ends_are_known_by_name_and_address() {
        let p = SubnetPool::parse("10.200.0.0/16").unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(p.is_host_end("s1a2bx", "s1a2bx0", ip("10.200.0.1")));
        assert!(p.is_host_end("s1a2bx", "s1a2bx64", ip("10.200.1.1")));
        // Another slot's address, another daemon's prefix, the sandbox end,
        // a name that only starts like ours, and a slot outside the pool.
        assert!(!p.is_host_end("s1a2bx", "s1a2bx1", ip("10.200.0.1")));
        assert!(!p.is_host_end("s1a2bx", "s9999x0", ip("10.200.0.1")));
        assert!(!p.is_host_end("s1a2bx", "s1a2bx0", ip("10.200.0.2")));
        assert!(!p.is_host_end("s1a2bx", "s1a2bx", ip("10.200.0.1")));
        assert!(!p.is_host_end("s1a2bx", "s1a2bx+0", ip("10.200.0.1")));
        assert!(!p.is_host_end("s1a2bx", "s1a2bx99999", ip("10.200.0.1")));
        assert!(p.check_host(&[ip("10.201.0.1")]).is_ok());
        assert!(p.check_host(&[ip("10.200.3.1")]).is_err());
    }
}
