//! Several nodes on this machine sharing one PostgreSQL database: each its
//! own data dir, port and pool, all with the same sealing key (as nodes of
//! one installation must have). Only in the PostgreSQL pass.

use super::Daemon;
use sandstone_db::testing::TestDatabase;
use std::time::Duration;

/// Node `i` (0-based) is `node-<i+1>`, so placement's tie-break by id is
/// predictable.
pub struct Cluster {
    /// Declared before `db` and `s3`, so the nodes stop before the
    /// services they use.
    pub nodes: Vec<Daemon>,
    pub db: TestDatabase,
    /// The sealing key every node was given (hex), for deriving the node key.
    pub secret_key: String,
    pub ttl: Duration,
    /// The S3 server the nodes checkpoint to, when asked for.
    pub s3: Option<Moto>,
}

/// moto's S3 server (from `scripts/s3-server.sh install`), with
/// authentication off and one bucket.
pub struct Moto {
    child: std::process::Child,
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    pub const BUCKET: &str = "sandstone-test";

    /// Starts it, or panics: `scripts/test.sh` installs it and names it in
    /// `SANDSTONE_MOTO_SERVER` (else `/opt/sandstone-moto`).
    pub async fn start() -> Moto {
        let bin = std::env::var("SANDSTONE_MOTO_SERVER")
            .unwrap_or_else(|_| "/opt/sandstone-moto/bin/moto_server".into());
        assert!(
            std::path::Path::new(&bin).is_file(),
            "no moto_server at {bin}: run scripts/s3-server.sh install"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let m = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http
                .put(format!("{}/{}", m.endpoint, Self::BUCKET))
                .send()
                .await
                && r.status().is_success()
            {
                return m;
            }
            assert!(std::time::Instant::now() < deadline, "moto did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The nodes' objects, through the checkpoint crate's S3 client (moto
    /// signs nothing itself, but takes only signed writes).
    pub fn blobs(&self) -> std::sync::Arc<dyn sandstone_checkpoint::Blobs> {
        let options = sandstone_checkpoint::store::S3Options {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            credentials: Some(sandstone_checkpoint::store::Credentials {
                access_key_id: "test".into(),
                secret_access_key: sandstone_api::Secret::new("test-secret"),
                session_token: None,
            }),
            path_style: None,
        };
        sandstone_checkpoint::store::open(&format!("s3://{}/nodes", Self::BUCKET), options).unwrap()
    }

    /// The settings a node needs to checkpoint here.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            (
                "SANDSTONE_OBJECT_STORE",
                format!("s3://{}/nodes", Self::BUCKET),
            ),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test-secret".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Cluster {
    /// `n` nodes with a lease TTL of `ttl`, all up; `None` (with a printed
    /// reason) outside the PostgreSQL pass.
    pub async fn start(n: usize, ttl: Duration) -> Option<Cluster> {
        Self::start_with(n, ttl, false).await
    }

    /// As [`Cluster::start`], checkpointing to a moto S3 server when
    /// `object_store`.
    pub async fn start_with(n: usize, ttl: Duration, object_store: bool) -> Option<Cluster> {
        super::require_root();
        let Some(db) = TestDatabase::create().await else {
            eprintln!(
                "skipped: several nodes need a shared PostgreSQL database ({} unset)",
                sandstone_db::testing::ENV
            );
            return None;
        };
        let secret_key = sandstone_api::random_hex(32);
        let s3 = if object_store {
            Some(Moto::start().await)
        } else {
            None
        };
        let mut nodes = Vec::new();
        for i in 0..n {
            let mut d = Daemon::set_up(&["--no-pool"], "").await;
            // The shared database instead of one of its own.
            d.db = None;
            d.serve_args = vec![
                "--database-url".into(),
                db.url_string().into(),
                "--node-id".into(),
                format!("node-{}", i + 1),
                "--node-lease-ttl".into(),
                ttl.as_secs().to_string(),
            ];
            d.env = vec![("SANDSTONE_SECRET_KEY".into(), secret_key.clone())];
            d.env.extend(s3.iter().flat_map(Moto::env));
            d.spawn().await;
            nodes.push(d);
        }
        let c = Cluster {
            nodes,
            db,
            secret_key,
            ttl,
            s3,
        };
        c.wait_live(n).await;
        Some(c)
    }

    /// Waits until node 1 sees `n` live nodes (each announces at start,
    /// then every third of the TTL).
    pub async fn wait_live(&self, n: usize) {
        let deadline = std::time::Instant::now() + self.ttl * 3;
        loop {
            let live = self.live_nodes(0).await;
            if live.len() == n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} nodes live: {live:?}",
                live.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The ids of the nodes node `via` lists as live.
    pub async fn live_nodes(&self, via: usize) -> Vec<String> {
        let (status, v) = self.nodes[via].get("/api/v1/nodes").await;
        assert_eq!(status, 200, "{v}");
        v["data"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["live"] == true)
            .map(|n| n["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// The node (0-based) whose data dir holds sandbox `id`'s volume.
    pub fn holder(&self, id: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|d| d.volumes().iter().any(|v| v == id))
    }

    /// The node-to-node token, as every node derives it.
    pub fn node_token(&self) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, hex::decode(&self.secret_key).unwrap()).unwrap();
        let sealer = sandstone_db::secrets::Sealer::load(&path).unwrap();
        hex::encode(sealer.derive("sandstone node-to-node auth v1"))
    }
}
