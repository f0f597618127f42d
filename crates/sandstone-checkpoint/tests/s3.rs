//! The S3 backend against a real S3-compatible server: moto's, started
//! here with authentication on (install it with `scripts/s3-server.sh
//! install`; without it these tests say so and pass).

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::{StreamExt, TryStreamExt};
use sandstone_api::Secret;
use sandstone_checkpoint::store::{Blobs, Credentials, S3Blobs, S3Options, StoreError};
use sandstone_checkpoint::{CheckpointId, MasterKey, SandboxId};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests moto serves without checking credentials; the test spends them
/// on making a user with full S3 rights and an access key for it.
const SETUP_ACTIONS: u32 = 3;

struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> Option<PathBuf> {
    let venv = std::env::var("SANDSTONE_MOTO_VENV").unwrap_or("/opt/sandstone-moto".into());
    std::env::var_os("SANDSTONE_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(venv).join("bin/moto_server"))
        .canonicalize()
        .ok()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Starts moto with authentication on after the setup actions, or `None`
/// (with the reason printed) when it is not installed. A binary named by
/// `SANDSTONE_MOTO_SERVER` (as `scripts/test.sh` does) must exist: there,
/// a missing server is a failure, not a skip.
fn start_moto() -> Option<Moto> {
    if let Some(named) = std::env::var_os("SANDSTONE_MOTO_SERVER") {
        assert!(
            PathBuf::from(&named).is_file(),
            "SANDSTONE_MOTO_SERVER={} does not exist",
            PathBuf::from(&named).display()
        );
    }
    let Some(bin) = moto_binary() else {
        println!(
            "SKIPPED: moto_server not found (set SANDSTONE_MOTO_SERVER, or run \
             scripts/s3-server.sh install)"
        );
        return None;
    };
    let port = free_port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", SETUP_ACTIONS.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let moto = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(moto)
}

/// An IAM query call, unsigned (it is one of the free setup actions); the
/// Authorization header only tells moto which service it is for.
async fn iam(endpoint: &str, params: &[(&str, &str)]) -> String {
    let body: String = params
        .iter()
        .chain(&[("Version", "2010-05-08")])
        .map(|(k, v)| format!("{k}={}", form_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let answer = reqwest::Client::new()
        .post(format!("{endpoint}/"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20260101/us-east-1/iam/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let text = answer.text().await.unwrap();
    assert!(status.is_success(), "IAM {params:?}: {status} {text}");
    text
}

fn form_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn tag<'a>(xml: &'a str, name: &str) -> &'a str {
    let open = format!("<{name}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no {name} in {xml}"))
        + open.len();
    let end = start + xml[start..].find(&format!("</{name}>")).unwrap();
    &xml[start..end]
}

/// A user allowed every S3 action, and its access key.
async fn s3_user(endpoint: &str) -> Credentials {
    iam(endpoint, &[("Action", "CreateUser"), ("UserName", "ckpt")]).await;
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
    iam(
        endpoint,
        &[
            ("Action", "PutUserPolicy"),
            ("UserName", "ckpt"),
            ("PolicyName", "all-s3"),
            ("PolicyDocument", policy),
        ],
    )
    .await;
    let key = iam(
        endpoint,
        &[("Action", "CreateAccessKey"), ("UserName", "ckpt")],
    )
    .await;
    Credentials {
        access_key_id: tag(&key, "AccessKeyId").into(),
        secret_access_key: Secret::new(tag(&key, "SecretAccessKey")),
        session_token: None,
    }
}

fn options(endpoint: &str, credentials: Credentials) -> S3Options {
    S3Options {
        endpoint: Some(endpoint.into()),
        region: Some("us-east-1".into()),
        credentials: Some(credentials),
        path_style: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_through_a_real_s3_server() {
    let Some(moto) = start_moto() else { return };
    let creds = s3_user(&moto.endpoint).await;
    let s3 = S3Blobs::new("ckpt", "install-1", options(&moto.endpoint, creds.clone())).unwrap();
    s3.create_bucket().await.unwrap();
    s3.create_bucket().await.unwrap(); // owned already: fine
    let blobs: Arc<dyn Blobs> = Arc::new(s3);
    blobs.probe().await.unwrap();

    // Objects, and a listing longer than one page (1000 keys).
    blobs
        .put("x/a", bytes::Bytes::from_static(b"one"))
        .await
        .unwrap();
    assert_eq!(&blobs.get("x/a").await.unwrap()[..], b"one");
    // Ranges, as a restore reads chunks out of packs.
    assert_eq!(&blobs.get_range("x/a", 1..3).await.unwrap()[..], b"ne");
    assert_eq!(&blobs.get_range("x/a", 2..10).await.unwrap()[..], b"e");
    assert_eq!(&blobs.get_range("x/a", 5..10).await.unwrap()[..], b"");
    let e = blobs.get_range("x/b", 0..1).await.unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
    assert!(blobs.exists("x/a").await.unwrap());
    assert!(!blobs.exists("x/b").await.unwrap());
    let e = blobs.get("x/b").await.unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
    futures_util::stream::iter(0..1100)
        .map(|i| {
            let blobs = blobs.clone();
            async move {
                let key = format!("page/{i:05}");
                blobs.put(&key, bytes::Bytes::new()).await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    let listed = blobs.list("page/").await.unwrap();
    assert_eq!(listed.len(), 1100);
    // start-after, across pages.
    let after = blobs.list_after("page/", "page/00010").await.unwrap();
    assert_eq!(after.len(), 1089);
    assert_eq!(after[0], "page/00011");
    assert_eq!(
        blobs.list_after("page/", "page/01098").await.unwrap(),
        ["page/01099"]
    );
    assert_eq!(
        (listed[0].as_str(), listed[1099].as_str()),
        ("page/00000", "page/01099")
    );
    blobs.delete("x/a").await.unwrap();
    blobs.delete("x/a").await.unwrap();
    assert!(!blobs.exists("x/a").await.unwrap());

    // A checkpoint written by one node and restored by another.
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    build_tree(&tree, 2);
    let key = MasterKey::generate().unwrap();
    let id = CheckpointId::new(SandboxId::new("sb-s3").unwrap(), 1, 1);
    let a = node(blobs.clone(), &key, &dir.path().join("a")).await;
    let written = a.checkpoint(&tree, &id, None).await.unwrap();
    assert!(written.stats.chunks_uploaded > 0);
    // A few packs (1, 2, ... MiB) and their indexes, not an object per chunk.
    let packs = blobs.list("packs/").await.unwrap();
    assert!(
        packs.len() <= 3 && written.stats.chunks_uploaded > 20,
        "{packs:?} {:?}",
        written.stats
    );
    assert_eq!(blobs.list("pack-index/").await.unwrap().len(), packs.len());
    let b = node(blobs.clone(), &key, &dir.path().join("b")).await;
    assert_eq!(b.latest(&id.sandbox).await.unwrap(), Some(id.clone()));
    b.restore(&id, &dir.path().join("restored")).await.unwrap();
    assert_eq!(describe(&tree), describe(&dir.path().join("restored")));
    // Nothing in the bucket holds a known plaintext line.
    let keys = blobs.list("").await.unwrap();
    assert!(keys.iter().any(|k| k.starts_with("manifests/sb-s3/")));
    for k in keys.iter().filter(|k| !k.starts_with("page/")) {
        let data = blobs.get(k).await.unwrap();
        assert!(
            !data
                .windows(KNOWN_LINE.len())
                .any(|w| w == KNOWN_LINE.as_bytes()),
            "{k} holds plaintext"
        );
    }

    // Wrong secret, unknown key: access denied, the secret never shown.
    let wrong = Credentials {
        secret_access_key: Secret::new("wrong-secret-wrong-secret"),
        ..creds.clone()
    };
    let unknown = Credentials {
        access_key_id: "AKIANOBODYKNOWSTHIS".into(),
        ..creds.clone()
    };
    for (c, code) in [
        (wrong, "SignatureDoesNotMatch"),
        (unknown, "InvalidAccessKeyId"),
    ] {
        let s3 = S3Blobs::new("ckpt", "install-1", options(&moto.endpoint, c)).unwrap();
        let e = s3.probe().await.unwrap_err();
        assert!(matches!(e, StoreError::AccessDenied { .. }), "{e}");
        assert!(e.to_string().contains(code), "{e}");
        let text = format!("{e} {e:?}");
        assert!(!text.contains("wrong-secret") && !text.contains(creds.secret_access_key.expose()));
        let e = s3.get("x/a").await.unwrap_err();
        assert!(matches!(e, StoreError::AccessDenied { .. }), "{e}");
    }

    // A bucket that does not exist.
    let s3 = S3Blobs::new("no-such-bucket", "", options(&moto.endpoint, creds.clone())).unwrap();
    let e = s3.probe().await.unwrap_err();
    assert!(matches!(e, StoreError::NoSuchBucket { .. }), "{e}");
    let e = s3.put("k", bytes::Bytes::new()).await.unwrap_err();
    assert!(matches!(e, StoreError::NoSuchBucket { .. }), "{e}");
    drop(moto);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_reported_as_such() {
    // A port nothing listens on.
    let port = free_port();
    let creds = Credentials {
        access_key_id: "AKID".into(),
        secret_access_key: Secret::new("s"),
        session_token: None,
    };
    let s3 = S3Blobs::new("b", "", options(&format!("http://127.0.0.1:{port}"), creds)).unwrap();
    let started = Instant::now();
    let e = s3.probe().await.unwrap_err();
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
