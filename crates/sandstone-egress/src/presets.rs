//! Named presets: the hosts an agent most often needs, so a policy can say
//! `{"action": "allow", "preset": "python"}` (or `sandstone create --allow
//! python`) instead of listing a registry's domains. A preset only fills in
//! a traffic rule's domains and ports; the rule keeps its place in the
//! first-match order, so an explicit deny before it still wins.
//!
//! The lists are part of the documented API (README, "Presets"): changing
//! one changes what existing policies allow, so add hosts with care.

use crate::policy::PortRange;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// PyPI: `pip install`, `uv`, `poetry`.
    Python,
    /// The npm registry: `npm`, `yarn`, `pnpm`.
    Node,
    /// crates.io and rustup's downloads.
    Rust,
    /// Go's module proxy and checksum database.
    Go,
    /// RubyGems: `gem install`, `bundle`.
    Ruby,
    /// Debian's archive: `apt-get` (HTTP and HTTPS).
    Debian,
    /// GitHub: the site, the API, raw content and release downloads, git
    /// over HTTPS and SSH.
    Github,
    /// Anthropic's API.
    Anthropic,
}

impl Preset {
    pub const ALL: [Preset; 8] = [
        Preset::Python,
        Preset::Node,
        Preset::Rust,
        Preset::Go,
        Preset::Ruby,
        Preset::Debian,
        Preset::Github,
        Preset::Anthropic,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Python => "python",
            Preset::Node => "node",
            Preset::Rust => "rust",
            Preset::Go => "go",
            Preset::Ruby => "ruby",
            Preset::Debian => "debian",
            Preset::Github => "github",
            Preset::Anthropic => "anthropic",
        }
    }

    pub fn from_name(name: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == name)
    }

    pub fn domains(self) -> &'static [&'static str] {
        match self {
            Preset::Python => &["pypi.org", "files.pythonhosted.org"],
            Preset::Node => &["registry.npmjs.org", "registry.yarnpkg.com"],
            Preset::Rust => &[
                "crates.io",
                "index.crates.io",
                "static.crates.io",
                "static.rust-lang.org",
            ],
            Preset::Go => &[
                "proxy.golang.org",
                "sum.golang.org",
                "storage.googleapis.com",
            ],
            Preset::Ruby => &["rubygems.org", "index.rubygems.org"],
            Preset::Debian => &["deb.debian.org", "security.debian.org"],
            Preset::Github => &[
                "github.com",
                "api.github.com",
                "codeload.github.com",
                "*.githubusercontent.com",
            ],
            Preset::Anthropic => &["api.anthropic.com"],
        }
    }

    /// TCP ports; apt still speaks plain HTTP to Debian's mirrors (its
    /// packages are signed), git speaks SSH to GitHub.
    pub fn ports(self) -> &'static [u16] {
        match self {
            Preset::Debian => &[80, 443],
            Preset::Github => &[443, 22],
            _ => &[443],
        }
    }

    pub(crate) fn port_ranges(self) -> Vec<PortRange> {
        self.ports()
            .iter()
            .map(|&port| PortRange::tcp(port))
            .collect()
    }

    /// The preset whose domains cover `host` on `port`, for suggestions.
    pub fn covering(host: &str, port: Option<u16>) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| {
            p.domains()
                .iter()
                .any(|d| crate::policy::domain_matches(d, host))
                && port.is_none_or(|port| p.ports().contains(&port))
        })
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_name() {
        for p in Preset::ALL {
            assert_eq!(Preset::from_name(p.name()), Some(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{p}\""));
            assert!(crate::policy::valid_domain(p.domains()[0]));
        }
        assert_eq!(Preset::from_name("pyhton"), None);
    }

    #[test]
    fn covering_finds_the_preset_of_a_host_and_port() {
        assert_eq!(
            Preset::covering("files.pythonhosted.org", Some(443)),
            Some(Preset::Python)
        );
        assert_eq!(
            Preset::covering("objects.githubusercontent.com", Some(443)),
            Some(Preset::Github)
        );
        assert_eq!(Preset::covering("pypi.org", Some(22)), None);
        assert_eq!(Preset::covering("example.com", None), None);
    }
}
