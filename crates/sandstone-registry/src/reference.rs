//! Image references as Docker and OCI tools write them:
//! `[registry/]repository[:tag][@sha256:…]`.

use crate::{Error, Result};
use sandstone_oci::Digest;

/// Docker Hub, for a reference that names no registry.
const DOCKER_HUB: &str = "registry-1.docker.io";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`.
    pub registry: String,
    pub repository: String,
    /// What to ask the registry for: a digest when the reference pins
    /// one, else the tag.
    pub tag: String,
    pub digest: Option<Digest>,
}

impl Reference {
    /// The manifest reference the registry is asked for.
    pub fn manifest(&self) -> String {
        match &self.digest {
            Some(d) => d.to_string(),
            None => self.tag.clone(),
        }
    }

    /// Plain HTTP for a registry on this host's loopback, as Docker treats
    /// `localhost`; HTTPS everywhere else.
    pub fn base_url(&self) -> String {
        let host = self
            .registry
            .rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(self.registry.as_str(), |(h, _)| h);
        let loopback = host == "localhost"
            || host == "[::1]"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback());
        let scheme = if loopback { "http" } else { "https" };
        format!("{scheme}://{}", self.registry)
    }
}

impl std::fmt::Display for Reference {
    /// The full reference, registry and all: `host/repo:tag` or
    /// `host/repo@sha256:…`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        match &self.digest {
            Some(d) => write!(f, "@{d}"),
            None => write!(f, ":{}", self.tag),
        }
    }
}

impl std::str::FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Reference> {
        let bad = |reason| Error::Reference {
            reference: s.to_string(),
            reason,
        };
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| bad("the digest is not sha256:<64 hex digits>"))?,
                ),
            ),
            None => (s, None),
        };
        // A first component with a dot or a port, or `localhost`, is a
        // registry host; otherwise the image is on Docker Hub.
        let (registry, path) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path)
            }
            _ => (DOCKER_HUB.to_string(), rest),
        };
        // The tag follows the last `:` after the last `/` (a port is
        // before the first `/`).
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, tag),
            _ => (path, "latest"),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
                && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        };
        if !repository.split('/').all(component_ok) {
            return Err(bad(
                "a repository is lowercase letters, digits and . _ - between slashes",
            ));
        }
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            && !tag.starts_with(['.', '-']);
        if !tag_ok {
            return Err(bad("a tag is up to 128 letters, digits and . _ -"));
        }
        Ok(Reference {
            registry,
            repository,
            tag: tag.to_string(),
            digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        s.parse().unwrap()
    }

    #[test]
    fn references_resolve_as_docker_resolves_them() {
        let a = r("alpine");
        assert_eq!(
            (a.registry.as_str(), a.repository.as_str(), a.tag.as_str()),
            (DOCKER_HUB, "library/alpine", "latest")
        );
        let b = r("127.0.0.1:5000/team/app:v1");
        assert_eq!(
            (b.registry.as_str(), b.repository.as_str(), b.manifest()),
            ("127.0.0.1:5000", "team/app", "v1".to_string())
        );
        assert_eq!(b.base_url(), "http://127.0.0.1:5000");
        let pinned = format!("ghcr.io/o/app@sha256:{}", "a".repeat(64));
        let c = r(&pinned);
        assert_eq!(c.manifest(), format!("sha256:{}", "a".repeat(64)));
        assert_eq!(c.base_url(), "https://ghcr.io");
        assert_eq!(r("localhost/x").base_url(), "http://localhost");
        for bad in [
            "Upper/case",
            "a//b",
            "x:bad tag",
            "x@sha256:12",
            "host.io/../x",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad}");
        }
    }
}
