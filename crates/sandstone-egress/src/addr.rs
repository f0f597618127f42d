//! Sandbox subnets: one /30 per sandbox slot, carved from a private pool.

use crate::cidr::Cidr;
use std::net::{IpAddr, Ipv4Addr};

#[derive(Debug, Clone, Copy)]
pub struct SubnetPool {
    base: u32,
    prefix: u8,
}

impl SubnetPool {
    /// A pool such as `10.200.0.0/14`. Refuses 192.0.2.0/24 (this
    /// workplace's uplink) and any range that overlaps `host` addresses.
    pub fn new(cidr: &str, host: &[IpAddr]) -> Result<SubnetPool, String> {
        let (addr, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| format!("{cidr:?} is not a CIDR"))?;
        let base: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{cidr:?} is not an IPv4 CIDR"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=29).contains(p))
            .ok_or("prefix must be 8..29")?;
        let pool = SubnetPool {
            base: u32::from(base) & (u32::MAX << (32 - prefix)),
            prefix,
        };
        let whole: Cidr = cidr.parse()?;
        let uplink: Cidr = "192.0.2.0/24".parse().expect("constant");
        if whole.contains("192.0.2.1".parse().unwrap()) || uplink.contains(IpAddr::V4(base)) {
            return Err("the pool must not overlap 192.0.2.0/24".into());
        }
        if let Some(ip) = host.iter().find(|ip| whole.contains(**ip)) {
            return Err(format!("the pool overlaps the host address {ip}"));
        }
        Ok(pool)
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
}
