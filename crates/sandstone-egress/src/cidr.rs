//! IPv4/IPv6 CIDR blocks.

use std::net::IpAddr;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The block of `prefix` bits around `net` (clamped to its family's
    /// length).
    pub fn new(net: IpAddr, prefix: u8) -> Cidr {
        let max = if net.is_ipv4() { 32 } else { 128 };
        Cidr {
            net,
            prefix: prefix.min(max),
        }
    }

    /// Whether the two blocks share an address: one holds the other's base.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.net) || other.contains(self.net)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.net, ip) {
            // An IPv4-mapped IPv6 address is the IPv4 address it maps.
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (_, ip) => ip,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Why a string is not a [`Cidr`]; the string is quoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address or CIDR")]
    Address(String),
    #[error("{0:?} has a bad prefix length")]
    Prefix(String),
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `10.0.0.0/8`, `::1/128`, or a bare address (a single host).
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::Address(s.to_string()))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| CidrError::Prefix(s.to_string()))?,
            None => max,
        };
        Ok(Cidr { net, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn matching() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains(ip("10.1.255.7")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")), "v4-mapped");
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        let host: Cidr = "169.254.169.254".parse().unwrap();
        assert!(host.contains(ip("169.254.169.254")) && !host.contains(ip("169.254.169.253")));
        let v6: Cidr = "fe80::/10".parse().unwrap();
        assert!(v6.contains(ip("fe80::1")) && !v6.contains(ip("2001:db8::1")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
    }
}
