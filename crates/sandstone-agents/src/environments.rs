//! Environments (`self_hosted`, whose workers poll with the environment's
//! keys, stored as hashes and shown once; and `cloud`, served by the
//! daemon's executor, see [`crate::cloud`]) and their keys.

use crate::Agents;
use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, new_token, now};
use crate::registry::{ENVIRONMENT, KEY, Registry};
use crate::validate::{self, optional, required};
use sandstone_agents_api::{
    CloudConfig, CloudConfigParams, Deleted, Environment, EnvironmentConfig,
    EnvironmentConfigParams, EnvironmentKey, EnvironmentKeyTag, EnvironmentParams, EnvironmentTag,
    Extra, LimitedNetwork, Metadata, Networking, NetworkingParams, Packages, PackagesBuild,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How a key is stored: as listed, with the hash it is found by.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct StoredKey {
    #[serde(flatten)]
    pub key: EnvironmentKey,
    pub hash: String,
}

impl Registry {
    pub(crate) async fn create_environment(&self, body: &Value) -> ApiResult<Environment> {
        let p: EnvironmentParams = validate::body(body)?;
        let t = now();
        let doc = Environment {
            tag: EnvironmentTag,
            id: new_id("env"),
            name: required(p.name.flatten(), "name", 256)?,
            description: optional(p.description.flatten(), "description", 2048)?,
            metadata: validate::metadata(&Metadata::new(), p.metadata.flatten().as_ref())?,
            scope: p.scope.flatten().unwrap_or_else(|| "organization".into()),
            config: environment_config(None, p.config.flatten())?,
            created_at: t.clone(),
            updated_at: t,
            archived_at: None,
            packages_build: None,
            extra: Extra::new(),
        };
        self.save_environment(&doc).await?;
        Ok(doc)
    }

    pub(crate) fn environment(&self, id: &str) -> ApiResult<Environment> {
        self.state()
            .environments
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::EnvironmentNotFound(id.to_string()))
    }

    pub(crate) fn environments(&self, include_archived: bool) -> Vec<Environment> {
        let st = self.state();
        let mut all: Vec<Environment> = st
            .environments
            .values()
            .filter(|e| include_archived || e.archived_at.is_none())
            .cloned()
            .collect();
        all.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        all
    }

    /// The environment updated, and whether its config changed.
    pub(crate) async fn update_environment(
        &self,
        id: &str,
        body: &Value,
    ) -> ApiResult<(Environment, bool)> {
        let p: EnvironmentParams = validate::body(body)?;
        let mut doc = self.environment(id)?;
        if let Some(name) = p.name {
            doc.name = required(name, "name", 256)?;
        }
        if let Some(d) = p.description {
            doc.description = optional(d, "description", 2048)?;
        }
        let mut changed = false;
        if let Some(Some(c)) = p.config {
            let config = environment_config(Some(&doc.config), Some(c))?;
            changed = config != doc.config;
            if changed {
                // Built for packages it no longer has.
                doc.packages_build = None;
            }
            doc.config = config;
        }
        doc.metadata = validate::metadata(&doc.metadata, p.metadata.flatten().as_ref())?;
        doc.updated_at = now();
        self.save_environment(&doc).await?;
        Ok((doc, changed))
    }

    /// Records how the environment's packages build went (the executor
    /// reports it), unless its config changed since.
    pub(crate) async fn packages_built(
        &self,
        id: &str,
        packages: &Packages,
        build: PackagesBuild,
    ) -> ApiResult<()> {
        let mut doc = self.environment(id)?;
        if doc.config.cloud().map(|c| &c.packages) != Some(packages) {
            return Ok(());
        }
        doc.packages_build = Some(build);
        self.save_environment(&doc).await
    }

    async fn save_environment(&self, doc: &Environment) -> ApiResult<()> {
        let _gate = self.changing().await;
        self.store
            .put_doc(ENVIRONMENT, &doc.id, &json!(doc))
            .await?;
        self.state()
            .environments
            .insert(doc.id.clone(), doc.clone());
        Ok(())
    }

    pub(crate) async fn archive_environment(&self, id: &str) -> ApiResult<Environment> {
        let mut doc = self.environment(id)?;
        if doc.archived_at.is_none() {
            let t = now();
            doc.archived_at = Some(t.clone());
            doc.updated_at = t;
            self.save_environment(&doc).await?;
        }
        Ok(doc)
    }

    /// Mints an environment key; the only time it is shown.
    pub(crate) async fn create_key(&self, env: &str) -> ApiResult<EnvironmentKey> {
        self.environment(env)?;
        let secret = new_token(crate::auth::ENV_KEY_PREFIX);
        let stored = StoredKey {
            key: EnvironmentKey {
                tag: EnvironmentKeyTag,
                id: new_id("envkey"),
                environment_id: env.to_string(),
                created_at: now(),
                revoked_at: None,
                key: None,
                extra: Extra::new(),
            },
            hash: sandstone_db::token_hash(&secret),
        };
        let _gate = self.changing().await;
        self.store
            .put_doc(KEY, &stored.hash, &json!(stored))
            .await?;
        let mut shown = stored.key.clone();
        self.state().keys.insert(stored.hash.clone(), stored);
        shown.key = Some(secret);
        Ok(shown)
    }

    pub(crate) fn keys(&self, env: &str) -> ApiResult<Vec<EnvironmentKey>> {
        self.environment(env)?;
        let st = self.state();
        let mut out: Vec<EnvironmentKey> = st
            .keys
            .values()
            .filter(|k| k.key.environment_id == env)
            .map(|k| k.key.clone())
            .collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        Ok(out)
    }

    pub(crate) async fn revoke_key(&self, env: &str, key_id: &str) -> ApiResult<EnvironmentKey> {
        let _gate = self.changing().await;
        let stored = {
            let mut st = self.state();
            let k = st
                .keys
                .values_mut()
                .find(|k| k.key.id == key_id && k.key.environment_id == env)
                .ok_or_else(|| ApiError::not_found("environment key", key_id))?;
            if k.key.revoked_at.is_none() {
                k.key.revoked_at = Some(now());
            }
            k.clone()
        };
        self.store
            .put_doc(KEY, &stored.hash, &json!(stored))
            .await?;
        Ok(stored.key)
    }

    pub(crate) fn environment_of_key(&self, hash: &str) -> ApiResult<String> {
        let st = self.state();
        let k = st
            .keys
            .get(hash)
            .ok_or_else(|| ApiError::unauthorized("invalid environment key"))?;
        if k.key.revoked_at.is_some() {
            return Err(ApiError::unauthorized(
                "this environment key has been revoked",
            ));
        }
        Ok(k.key.environment_id.clone())
    }

    pub(crate) fn has_environment(&self, id: &str) -> bool {
        self.state().environments.contains_key(id)
    }
}

impl Agents {
    /// Deletes an environment, revokes its keys and stops its work items
    /// (their sessions are no longer queued anywhere).
    pub(crate) async fn delete_environment(&self, id: &str) -> ApiResult<Deleted> {
        let registry = &self.registry;
        let _gate = registry.changing().await;
        registry.environment(id)?;
        registry.store.delete_doc(ENVIRONMENT, id).await?;
        self.queue.stop_environment(id).await?;
        let revoked: Vec<String> = {
            let mut st = registry.state();
            st.environments.remove(id);
            let keys: Vec<String> = st
                .keys
                .iter()
                .filter(|(_, k)| k.key.environment_id == id)
                .map(|(h, _)| h.clone())
                .collect();
            for h in &keys {
                st.keys.remove(h);
            }
            keys
        };
        for hash in revoked {
            registry.store.delete_doc(KEY, &hash).await?;
        }
        self.forget_cloud(id);
        Ok(Deleted {
            id: id.to_string(),
            kind: "environment_deleted".into(),
        })
    }
}

/// The config a create (`current` is `None`) or an update asks for,
/// checked. An update of a `cloud` config keeps the fields it leaves out.
fn environment_config(
    current: Option<&EnvironmentConfig>,
    p: Option<EnvironmentConfigParams>,
) -> ApiResult<EnvironmentConfig> {
    let config = match p {
        None => current.cloned().unwrap_or(EnvironmentConfig::SelfHosted),
        Some(EnvironmentConfigParams::SelfHosted) => EnvironmentConfig::SelfHosted,
        Some(EnvironmentConfigParams::Cloud(c)) => {
            let base = current.and_then(EnvironmentConfig::cloud).cloned();
            EnvironmentConfig::Cloud(merge_cloud(base, c))
        }
    };
    if let EnvironmentConfig::Cloud(c) = &config {
        check_cloud(c)?;
    }
    Ok(config)
}

fn merge_cloud(base: Option<CloudConfig>, p: CloudConfigParams) -> CloudConfig {
    let CloudConfig {
        networking,
        mut packages,
    } = base.unwrap_or(CloudConfig {
        networking: Networking::Unrestricted,
        packages: Packages::default(),
    });
    let networking = match p.networking.flatten() {
        None => networking,
        Some(NetworkingParams::Unrestricted) => Networking::Unrestricted,
        Some(NetworkingParams::Limited(l)) => {
            let mut n = match networking {
                Networking::Limited(n) => n,
                Networking::Unrestricted => LimitedNetwork::default(),
            };
            if let Some(v) = l.allow_mcp_servers.flatten() {
                n.allow_mcp_servers = v;
            }
            if let Some(v) = l.allow_package_managers.flatten() {
                n.allow_package_managers = v;
            }
            if let Some(v) = l.allowed_hosts.flatten() {
                n.allowed_hosts = v;
            }
            Networking::Limited(n)
        }
    };
    if let Some(p) = p.packages.flatten() {
        for (have, new) in [
            (&mut packages.apt, p.apt),
            (&mut packages.cargo, p.cargo),
            (&mut packages.gem, p.gem),
            (&mut packages.go, p.go),
            (&mut packages.npm, p.npm),
            (&mut packages.pip, p.pip),
        ] {
            if let Some(v) = new.flatten() {
                *have = v;
            }
        }
    }
    CloudConfig {
        networking,
        packages,
    }
}

const MAX_HOSTS: usize = 256;
const MAX_PACKAGES: usize = 100;

fn check_cloud(c: &CloudConfig) -> ApiResult<()> {
    if let Networking::Limited(n) = &c.networking {
        if n.allowed_hosts.len() > MAX_HOSTS {
            return Err(ApiError::invalid(format!(
                "config.networking.allowed_hosts: at most {MAX_HOSTS} hosts"
            )));
        }
        for (i, h) in n.allowed_hosts.iter().enumerate() {
            if !valid_host(h) {
                return Err(ApiError::invalid(format!(
                    "config.networking.allowed_hosts[{i}]: {h:?} is not a host name (a name like api.example.com, or *.example.com for its subdomains)"
                )));
            }
        }
        if !n.allow_package_managers && !c.packages.is_empty() {
            return Err(ApiError::invalid(
                "config.packages: installing packages under limited networking needs networking.allow_package_managers: true",
            ));
        }
    }
    for (manager, names) in c.packages.by_manager() {
        if names.len() > MAX_PACKAGES {
            return Err(ApiError::invalid(format!(
                "config.packages.{manager}: at most {MAX_PACKAGES} packages"
            )));
        }
        for (i, name) in names.iter().enumerate() {
            if !valid_package(name) {
                return Err(ApiError::invalid(format!(
                    "config.packages.{manager}[{i}]: {name:?} is not a package name (with an optional version), as its installer takes one"
                )));
            }
        }
    }
    Ok(())
}

/// A DNS name, or `*.` and one: what the egress policy's domains take.
pub(crate) fn valid_host(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A package and its version as installers take them (`requests==2.32`,
/// `left-pad@1.3.0`, `libssl-dev=3.0*`, `github.com/x/y@latest`): never
/// an option (a leading `-`), whitespace or a shell metacharacter, since
/// the build runs the installer with it.
fn valid_package(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 214
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-=<>!~@/:[],*^".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandstone_agents_api::{LimitedNetworkParams, PackagesParams};

    fn cloud(v: serde_json::Value) -> ApiResult<EnvironmentConfig> {
        let p: EnvironmentConfigParams = serde_json::from_value(v).unwrap();
        environment_config(None, Some(p))
    }

    #[test]
    fn a_cloud_config_defaults_to_unrestricted_without_packages() {
        let c = cloud(json!({"type": "cloud"})).unwrap();
        assert_eq!(
            c,
            EnvironmentConfig::Cloud(CloudConfig {
                networking: Networking::Unrestricted,
                packages: Packages::default()
            })
        );
        assert_eq!(
            json!(c),
            json!({"type": "cloud", "networking": {"type": "unrestricted"},
                   "packages": {"type": "packages", "apt": [], "cargo": [], "gem": [], "go": [], "npm": [], "pip": []}})
        );
    }

    #[test]
    fn an_update_keeps_what_it_leaves_out() {
        let c = cloud(json!({"type": "cloud",
            "networking": {"type": "limited", "allowed_hosts": ["api.example.com"], "allow_package_managers": true},
            "packages": {"pip": ["requests==2.32.3"], "apt": ["jq"]}}))
        .unwrap();
        let p = EnvironmentConfigParams::Cloud(CloudConfigParams {
            networking: Some(Some(NetworkingParams::Limited(LimitedNetworkParams {
                allow_mcp_servers: Some(Some(true)),
                ..Default::default()
            }))),
            packages: Some(Some(PackagesParams {
                pip: Some(Some(vec![])),
                ..Default::default()
            })),
        });
        let Ok(EnvironmentConfig::Cloud(u)) = environment_config(Some(&c), Some(p)) else {
            panic!("not cloud");
        };
        let Networking::Limited(n) = &u.networking else {
            panic!("not limited");
        };
        assert_eq!(n.allowed_hosts, ["api.example.com"]);
        assert!(n.allow_mcp_servers && n.allow_package_managers);
        assert_eq!((u.packages.pip.len(), u.packages.apt.len()), (0, 1));
        // Omitting config keeps it; another type replaces it.
        assert_eq!(environment_config(Some(&c), None).unwrap(), c);
        let s = environment_config(Some(&c), Some(EnvironmentConfigParams::SelfHosted));
        assert_eq!(s.unwrap(), EnvironmentConfig::SelfHosted);
    }

    #[test]
    fn bad_hosts_and_packages_are_refused_by_field() {
        let err = |v| cloud(v).unwrap_err().to_string();
        let e = err(
            json!({"type": "cloud", "networking": {"type": "limited", "allowed_hosts": ["ok.test", "no host"]}}),
        );
        assert!(e.contains("config.networking.allowed_hosts[1]"), "{e}");
        let e = err(json!({"type": "cloud", "packages": {"pip": ["ok", "x; rm -rf /"]}}));
        assert!(e.contains("config.packages.pip[1]"), "{e}");
        let e = err(json!({"type": "cloud", "packages": {"npm": ["--registry=http://evil"]}}));
        assert!(e.contains("config.packages.npm[0]"), "{e}");
        let e = err(
            json!({"type": "cloud", "networking": {"type": "limited"}, "packages": {"pip": ["x"]}}),
        );
        assert!(e.contains("allow_package_managers"), "{e}");
        for ok in [
            "requests[socks]>=2.31,<3",
            "left-pad@1.3.0",
            "golang.org/x/tools/cmd/stringer@latest",
            "libssl-dev=3.0*",
        ] {
            assert!(valid_package(ok), "{ok}");
        }
    }
}
