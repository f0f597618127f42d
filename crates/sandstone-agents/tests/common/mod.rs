//! The control plane in-process for tests that need no root: the `/v1`
//! router over a scratch store (SQLite in a temporary directory, or a fresh
//! PostgreSQL database when `SANDSTONE_TEST_DATABASE_URL` is set), on a
//! loopback port, with the scripted model (tests/fake_model/server.py). `kill` drops the
//! plane's runtime with every task on it, as a killed daemon would stop;
//! `spawn` starts it again from the same store.

#![allow(dead_code)]

use sandstone_agents::{Agents, ApiKeyCheck, Config};
use sandstone_db::Location;
use sandstone_db::testing::Scratch;
use std::sync::Arc;
use std::time::Duration;

#[path = "../../../../tests/support/v1_client.rs"]
mod v1_client;
pub use v1_client::*;

/// The control plane as the e2e tests' daemon shows it: `url`, `token`,
/// `http`, `kill` and `spawn`.
pub struct Plane {
    pub url: String,
    pub token: String,
    pub http: reqwest::Client,
    /// Where the plane keeps its state, across `kill` and `spawn` (shared
    /// by the planes made `beside` it).
    pub db: Arc<Scratch>,
    config: Config,
    /// The sealing key, shared by the planes made `beside` it.
    key: [u8; 32],
    port: u16,
    running: Option<(
        std::thread::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    )>,
}

fn rand_key() -> [u8; 32] {
    let hex = sandstone_api::random_hex(32);
    std::array::from_fn(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
}

impl Plane {
    /// The plane whose agent loop calls `model`, with `lease_ttl`-second
    /// leases.
    pub async fn start(model: &FakeModel, lease_ttl: u64) -> Plane {
        let mut p = Plane {
            url: String::new(),
            token: "sk-sst-test-api-key".into(),
            http: reqwest::Client::new(),
            db: Arc::new(Scratch::new().await),
            config: Config {
                model_base_url: model.url.clone(),
                model_api_key: Some(MODEL_KEY.into()),
                lease_ttl: Duration::from_secs(lease_ttl),
                max_tokens: 8192,
                outbound: None,
                node: format!("plane-{}", sandstone_api::random_hex(6)),
            },
            key: rand_key(),
            port: 0,
            running: None,
        };
        p.spawn().await;
        p
    }

    /// Another node on the same database: its own runtime, port and node
    /// name.
    pub async fn beside(&self) -> Plane {
        let mut config = self.config.clone();
        config.node = format!("plane-{}", sandstone_api::random_hex(6));
        let mut p = Plane {
            url: String::new(),
            token: self.token.clone(),
            http: reqwest::Client::new(),
            db: self.db.clone(),
            config,
            key: self.key,
            port: 0,
            running: None,
        };
        p.spawn().await;
        p
    }

    /// Serves the plane on its own runtime and thread, on the same port
    /// as before (a new one the first time).
    pub async fn spawn(&mut self) {
        assert!(self.running.is_none(), "already running");
        let location: Location = self.db.location();
        let (config, token, port) = (self.config.clone(), self.token.clone(), self.port);
        let key = self.key;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, bound) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let store = location.open().await.unwrap();
                let api_keys: ApiKeyCheck = Arc::new(move |t: String| {
                    let grant = (t == token).then(|| sandstone_agents::KeyGrant {
                        role: sandstone_api::auth::Role::Admin,
                        team: sandstone_db::DEFAULT_TEAM.into(),
                    });
                    Box::pin(async move { grant })
                });
                let sealer = Arc::new(sandstone_db::secrets::Sealer::from_key(key));
                let agents = Agents::start(store, config, api_keys, sealer)
                    .await
                    .unwrap();
                let app = axum::Router::new().nest("/v1", sandstone_agents::router(agents));
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .unwrap();
                ready.send(listener.local_addr().unwrap().port()).unwrap();
                tokio::select! {
                    r = axum::serve(listener, app) => r.unwrap(),
                    _ = stopped => {}
                }
            });
            // Dropping the runtime cancels every task on it: turn drivers,
            // lease expiry, open streams.
            drop(rt);
        });
        let port = tokio::task::spawn_blocking(move || bound.recv().unwrap())
            .await
            .unwrap();
        self.port = port;
        self.url = format!("http://127.0.0.1:{port}");
        self.running = Some((thread, stop));
    }

    /// Stops the plane at once, whatever it was doing.
    pub fn kill(&mut self) {
        if let Some((thread, stop)) = self.running.take() {
            let _ = stop.send(());
            thread.join().unwrap();
        }
    }
}

impl Endpoint for Plane {
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

impl Drop for Plane {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plane whose agent loop calls the fake model.
pub async fn daemon(model: &FakeModel, lease_ttl: u64) -> Plane {
    Plane::start(model, lease_ttl).await
}
