//! The installation's egress pool: chosen once (by `sandstone setup`, or by
//! the first `serve` of a data directory set up before networking was the
//! default) from private ranges this host does not use, and recorded in
//! `<data-dir>/network.json`, so that every later start — with its own
//! sandboxes' routes now inside the pool — keeps the same subnets.

use sandstone_egress::cidr::Cidr;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

const FILE: &str = "network.json";

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Recorded {
    egress_pool: String,
}

/// The pool recorded for `data_dir`, if any.
pub fn recorded(data_dir: &Path) -> anyhow::Result<Option<String>> {
    let path = data_dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let r: Recorded = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Ok(Some(r.egress_pool))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("read {}: {e}", path.display())),
    }
}

/// The recorded pool, or a newly chosen one, recorded (0600).
pub fn recorded_or_choose(data_dir: &Path) -> anyhow::Result<String> {
    if let Some(pool) = recorded(data_dir)? {
        return Ok(pool);
    }
    let pool = choose(&host_networks()).ok_or_else(|| {
        anyhow::anyhow!(
            "no free private range for sandbox networks: pass --egress-pool or --no-network"
        )
    })?;
    let body = serde_json::to_vec_pretty(&Recorded {
        egress_pool: pool.clone(),
    })?;
    let tmp = data_dir.join(format!(".{FILE}.tmp"));
    crate::write_private(&tmp, &body)?;
    std::fs::rename(&tmp, data_dir.join(FILE))?;
    Ok(pool)
}

/// Candidate pools, most conventional first. 192.0.2.0/24 and every range
/// outside RFC 1918 are never candidates.
fn candidates() -> impl Iterator<Item = String> {
    (200..=219)
        .map(|b| format!("10.{b}.0.0/16"))
        .chain((16..=31).map(|b| format!("172.{b}.0.0/16")))
}

/// The first candidate that overlaps none of `used`.
fn choose(used: &[Cidr]) -> Option<String> {
    candidates().find(|c| {
        c.parse::<Cidr>()
            .is_ok_and(|cand| !used.iter().any(|u| u.overlaps(&cand)))
    })
}

/// Every IPv4 network the host routes or holds an address in (the default
/// route aside: it overlaps everything).
fn host_networks() -> Vec<Cidr> {
    let mut out = Vec::new();
    if let Ok(table) = std::fs::read_to_string("/proc/net/route") {
        for line in table.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(dest), Some(mask)) = (f.get(1), f.get(7)) else {
                continue;
            };
            let (Ok(dest), Ok(mask)) =
                (u32::from_str_radix(dest, 16), u32::from_str_radix(mask, 16))
            else {
                continue;
            };
            // The kernel prints them in host byte order of a little-endian
            // u32 holding network-order bytes.
            let (dest, mask) = (u32::from_be(dest.to_le()), u32::from_be(mask.to_le()));
            if mask == 0 {
                continue;
            }
            out.push(Cidr::new(
                IpAddr::V4(Ipv4Addr::from(dest)),
                mask.count_ones() as u8,
            ));
        }
    }
    for (_, ip) in crate::lifecycle::network::host_addresses() {
        out.push(Cidr::new(ip, if ip.is_ipv4() { 32 } else { 128 }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_free_private_range_is_chosen() {
        let used: Vec<Cidr> = ["192.0.2.0/24", "10.200.3.0/30", "10.201.0.1/32"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        assert_eq!(choose(&used).as_deref(), Some("10.202.0.0/16"));
        let everything: Vec<Cidr> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "172.16.0.0/12".parse().unwrap(),
        ];
        assert_eq!(choose(&everything), None);
    }

    #[test]
    fn a_chosen_pool_is_recorded_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(recorded(dir.path()).unwrap(), None);
        let first = recorded_or_choose(dir.path()).unwrap();
        assert!(
            first.starts_with("10.") || first.starts_with("172."),
            "{first}"
        );
        assert_eq!(
            recorded(dir.path()).unwrap().as_deref(),
            Some(first.as_str())
        );
        assert_eq!(recorded_or_choose(dir.path()).unwrap(), first);
        std::fs::write(dir.path().join(FILE), "{\"egress_pol\": 1}").unwrap();
        assert!(recorded(dir.path()).is_err());
    }
}
