//! What the Managed Agents tests share: the `/v1` client (shared with the
//! control plane's own tests) and a daemon whose agent loop calls the
//! scripted model.

use super::Daemon;

#[path = "../../../../tests/support/v1_client.rs"]
mod v1_client;
pub use v1_client::*;

impl Endpoint for Daemon {
    fn url(&self) -> &str {
        &self.url
    }
    fn token(&self) -> &str {
        &self.token
    }
    fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// A daemon whose agent loop calls the fake model, with short leases.
pub async fn daemon(model: &FakeModel, lease_ttl: u64) -> Daemon {
    let mut d = Daemon::start().await;
    d.kill();
    d.serve_args = model_args(&d, model, lease_ttl);
    d.spawn().await;
    d
}

/// `sandstone serve` arguments pointing the agent loop at the fake model.
pub fn model_args(d: &Daemon, model: &FakeModel, lease_ttl: u64) -> Vec<String> {
    let key_file = d.data.path().join("model.key");
    std::fs::write(&key_file, MODEL_KEY).unwrap();
    vec![
        "--model-base-url".into(),
        model.url.clone(),
        "--model-api-key-file".into(),
        key_file.display().to_string(),
        "--lease-ttl-seconds".into(),
        lease_ttl.to_string(),
    ]
}
