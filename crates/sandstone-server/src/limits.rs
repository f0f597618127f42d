//! Parsing of Kubernetes-style resource quantities into cgroup limits.

use crate::lifecycle::Error;
use sandstone_api::Resources;
use sandstone_runtime::cgroup::Limits;

pub const DEFAULT_MEMORY: u64 = 2 << 30;
pub const DEFAULT_PIDS: u64 = 4096;
pub const DEFAULT_DISK: u64 = 10 << 30;
pub const MIN_DISK: u64 = 64 << 20;
const MIN_MEMORY: u64 = 16 << 20;

/// `512Mi`, `2Gi`, `1G`, `1048576`.
pub fn parse_memory(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `2`, `0.5`, `500m` → millicores.
pub fn parse_cpu(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(m) = s.strip_suffix('m') {
        return m.parse().ok().filter(|m| *m <= 1_024_000);
    }
    let v: f64 = s.parse().ok()?;
    (v.is_finite() && v > 0.0 && v <= 1024.0).then(|| (v * 1000.0).round() as u64)
}

/// A sandbox's cgroup limits: the claim's `config.resources`, over its
/// template's memory default (checked when the template was made), over
/// the daemon's defaults.
pub fn limits(res: Option<&Resources>, template_memory: Option<&str>) -> Result<Limits, Error> {
    let mut l = Limits {
        memory_bytes: Some(
            template_memory
                .and_then(parse_memory)
                .unwrap_or(DEFAULT_MEMORY),
        ),
        cpu_millis: None,
        pids: Some(DEFAULT_PIDS),
    };
    let Some(r) = res else { return Ok(l) };
    if let Some(m) = &r.memory {
        let bytes = parse_memory(m).ok_or_else(|| {
            Error::Invalid(format!(
                "invalid field `config.resources.memory`: {m:?} is not a quantity like 512Mi"
            ))
        })?;
        if bytes < MIN_MEMORY {
            return Err(Error::Invalid(
                "invalid field `config.resources.memory`: at least 16Mi".into(),
            ));
        }
        l.memory_bytes = Some(bytes);
    }
    if let Some(c) = &r.cpu {
        let millis = parse_cpu(c).filter(|m| *m >= 10).ok_or_else(|| {
            Error::Invalid(format!(
                "invalid field `config.resources.cpu`: {c:?} is not a CPU amount like 0.5 or 500m"
            ))
        })?;
        l.cpu_millis = Some(millis);
    }
    if let Some(p) = r.pids {
        if !(8..=1 << 22).contains(&p) {
            return Err(Error::Invalid(
                "invalid field `config.resources.pids`: between 8 and 4194304".into(),
            ));
        }
        l.pids = Some(p);
    }
    Ok(l)
}

/// Environment variables: names without `=` or NUL, values without NUL.
pub fn env_vars(
    field: &str,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<(), Error> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(Error::Invalid(format!(
                "invalid field `{field}.{k}`: names need no '=' or NUL, values no NUL"
            )));
        }
    }
    Ok(())
}

/// Longest `ttl`/`hard_ttl` accepted: ten years, in seconds.
pub const MAX_TTL: u64 = 10 * 365 * 24 * 3600;

/// Checks a claim configuration's `env_vars`, `ttl` and `hard_ttl` (seconds;
/// 0 disables), and the rest of what it sets.
pub fn check_config(config: &sandstone_api::SandboxConfig) -> Result<(), Error> {
    env_vars("config.env_vars", &config.env_vars)?;
    metadata("config.metadata", &config.metadata)?;
    sandstone_api::services::check_services(&config.services, "config.services")
        .map_err(Error::Invalid)?;
    if let Some(dir) = &config.uploads_dir {
        uploads_dir(dir)?;
    }
    if let Some(hook) = &config.webhook {
        crate::webhooks::check(hook).map_err(Error::Invalid)?;
    }
    for (field, v) in [("ttl", config.ttl), ("hard_ttl", config.hard_ttl)] {
        if v.is_some_and(|v| v > MAX_TTL) {
            return Err(Error::Invalid(format!(
                "invalid field `config.{field}`: at most {MAX_TTL} seconds"
            )));
        }
    }
    Ok(())
}

/// An absolute path of plain components, outside the file systems the
/// runtime mounts over the root after the binds (`/dev`, `/proc`, `/sys`),
/// and not the root or `/workspace` themselves.
fn uploads_dir(dir: &str) -> Result<(), Error> {
    let parts: Vec<&str> = dir.strip_prefix('/').unwrap_or("").split('/').collect();
    let clean = dir.starts_with('/')
        && dir.len() <= 256
        && parts
            .iter()
            .all(|p| !p.is_empty() && *p != "." && *p != ".." && !p.contains('\0'));
    let reserved = matches!(parts[0], "dev" | "proc" | "sys") || dir == "/workspace";
    if !clean || reserved {
        return Err(Error::Invalid(format!(
            "invalid field `config.uploads_dir`: {dir:?} is not an absolute path of at most 256 bytes without . or .. (nor /workspace, or under /dev, /proc or /sys)"
        )));
    }
    Ok(())
}

/// At most 16 labels; keys 1-64 of `[A-Za-z0-9._/-]`, values up to 512
/// bytes. `field` names them in a refusal.
pub fn metadata(field: &str, m: &std::collections::BTreeMap<String, String>) -> Result<(), Error> {
    if m.len() > 16 {
        return Err(Error::Invalid(format!(
            "invalid field `{field}`: at most 16 pairs"
        )));
    }
    for (k, v) in m {
        let key_ok = (1..=64).contains(&k.len())
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b));
        if !key_ok || v.len() > 512 {
            return Err(Error::Invalid(format!(
                "invalid field `{field}.{k}`: keys are 1-64 of A-Z a-z 0-9 . _ / -, values at most 512 bytes"
            )));
        }
    }
    Ok(())
}

/// The disk cap in bytes: the claim's `config.resources.disk`, else the
/// template's default, else 10Gi. With `max` (the pool's largest sane cap)
/// the defaults are clamped to fit the pool (the built-in one to half of
/// `max`, so one sandbox never takes it all) and a claim asking for more
/// than `max` is refused.
pub fn disk(
    res: Option<&Resources>,
    template_default: Option<&str>,
    max: Option<u64>,
) -> Result<Option<u64>, Error> {
    let max = max.map(|m| m.max(MIN_DISK));
    let claimed = res.and_then(|r| r.disk.as_deref());
    let Some(d) = claimed.or(template_default) else {
        let default = max.map_or(DEFAULT_DISK, |m| DEFAULT_DISK.min(m / 2).max(MIN_DISK));
        return Ok(Some(default));
    };
    let bytes = parse_memory(d).filter(|b| *b >= MIN_DISK).ok_or_else(|| {
        Error::Invalid(format!(
            "invalid field `config.resources.disk`: {d:?} is not a size of at least 64Mi like 10Gi"
        ))
    })?;
    match max {
        Some(m) if bytes > m && claimed.is_some() => Err(Error::Invalid(format!(
            "invalid field `config.resources.disk`: {d:?} is more than the storage pool allows one sandbox ({} MiB)",
            m >> 20
        ))),
        Some(m) => Ok(Some(bytes.min(m))),
        None => Ok(Some(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uploads_dir_is_a_clean_path_the_runtime_does_not_mount_over() {
        for bad in [
            "",
            "rel",
            "/",
            "/a/../b",
            "/a//b",
            "/a/",
            "/dev/x",
            "/proc",
            "/workspace",
        ] {
            assert!(uploads_dir(bad).is_err(), "{bad:?}");
        }
        for good in ["/mnt/session/uploads", "/workspace/in", "/data"] {
            assert!(uploads_dir(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_memory("512Mi"), Some(512 << 20));
        assert_eq!(parse_memory("1G"), Some(1_000_000_000));
        assert_eq!(parse_memory("12x"), None);
        assert_eq!(parse_cpu("500m"), Some(500));
        assert_eq!(parse_cpu("1.5"), Some(1500));
        assert_eq!(parse_cpu("-1"), None);
        assert_eq!(parse_cpu("99999999999m"), None);
        let bad = Resources {
            memory: Some("lots".into()),
            ..Default::default()
        };
        assert!(
            limits(Some(&bad), None)
                .unwrap_err()
                .to_string()
                .contains("config.resources.memory")
        );
    }

    #[test]
    fn disk_caps_fit_the_pool() {
        let claim = |d: &str| Resources {
            disk: Some(d.into()),
            ..Default::default()
        };
        let gib = 1u64 << 30;
        // No pool limit (the dir driver): as asked, default 10Gi.
        assert_eq!(disk(None, None, None).unwrap(), Some(DEFAULT_DISK));
        assert_eq!(
            disk(Some(&claim("20Gi")), None, None).unwrap(),
            Some(20 * gib)
        );
        // A pool allowing 6Gi: the default is half of that.
        let max = Some(6 * gib);
        assert_eq!(disk(None, None, max).unwrap(), Some(3 * gib));
        assert_eq!(
            disk(None, None, Some(100 * gib)).unwrap(),
            Some(DEFAULT_DISK)
        );
        assert_eq!(disk(Some(&claim("5Gi")), None, max).unwrap(), Some(5 * gib));
        // An explicit overcommit is refused, a template's default clamped.
        let e = disk(Some(&claim("10Gi")), None, max).unwrap_err();
        assert!(e.to_string().contains("config.resources.disk"), "{e}");
        assert_eq!(disk(None, Some("20Gi"), max).unwrap(), Some(6 * gib));
        // Never below the smallest cap, however small the pool.
        assert_eq!(disk(None, None, Some(1)).unwrap(), Some(MIN_DISK));
    }
}
