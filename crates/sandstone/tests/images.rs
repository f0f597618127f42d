//! Templates made from OCI images: imported (`sandstone template import`,
//! `POST /api/v1/templates/import`) from archives built here the way OCI
//! tools and `docker save` lay them out, or pulled (`POST
//! /api/v1/templates`) from the test registry (`tests/registry/server.py`,
//! the OCI distribution protocol with token auth), on top of a static
//! busybox (Debian's `busybox-static`, which `.ci/run` installs), then run.

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::Daemon;
use sandstone_oci::Digest;
use serde_json::{Value, json};
use std::io::Write;

/// One tar entry of a layer.
enum Ent<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
}

/// Names go into the header as they are (a builder would refuse `..`,
/// which a hostile image has).
fn tar_of(entries: &[Ent]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let (name, data): (&str, &[u8]) = match e {
            Ent::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (p, b"")
            }
            Ent::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                (p, data)
            }
            Ent::Symlink(p, to) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.as_old_mut().linkname[..to.len()].copy_from_slice(to.as_bytes());
                (p, b"")
            }
        };
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(data).unwrap();
    z.finish().unwrap()
}

/// The bottom layer: a static busybox and the commands the tests run.
fn busybox_layer() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox (apt-get install busybox-static; .ci/run does)");
    let mut entries = vec![Ent::Dir("bin"), Ent::File("bin/busybox", &busybox, 0o755)];
    for tool in ["sh", "cat", "ls", "echo"] {
        entries.push(Ent::Symlink(
            Box::leak(format!("bin/{tool}").into_boxed_str()),
            "busybox",
        ));
    }
    tar_of(&entries)
}

/// The image's own layers: files, an app, and a second layer that
/// replaces a file, deletes one (whiteout) and empties a directory
/// (opaque) before adding to it.
fn app_layers() -> (Vec<u8>, Vec<u8>) {
    let first = tar_of(&[
        Ent::Dir("etc"),
        Ent::File("etc/greeting", b"hello from layer 1\n", 0o644),
        Ent::Dir("opt"),
        Ent::File("opt/old", b"old\n", 0o644),
        Ent::Dir("opt/app"),
        Ent::File("opt/app/run.sh", b"#!/bin/sh\necho the app runs\n", 0o755),
        Ent::Dir("opt/dir"),
        Ent::File("opt/dir/a", b"a\n", 0o644),
    ]);
    let second = tar_of(&[
        Ent::File("etc/greeting", b"hello from layer 2\n", 0o644),
        Ent::File("opt/.wh.old", b"", 0o644),
        Ent::Dir("opt/dir"),
        Ent::File("opt/dir/.wh..wh..opq", b"", 0o644),
        Ent::File("opt/dir/b", b"b\n", 0o644),
    ]);
    (first, second)
}

/// An OCI image layout as a tar: `blobs` are (media type, uncompressed
/// tar, stored bytes), bottom first; `arch` names the image's platform.
/// Its index points at a nested index with an arm64 manifest first.
fn oci_archive(layers: &[(&str, &[u8], Vec<u8>)], arch: &str) -> Vec<u8> {
    let run = json!({"Env": ["PATH=/bin", "GREETING=from the image"], "WorkingDir": "/opt/app", "Cmd": ["/opt/app/run.sh"]});
    oci_archive_with(layers, arch, run)
}

/// [`oci_archive`] with the image config's `config` (its run settings).
fn oci_archive_with(layers: &[(&str, &[u8], Vec<u8>)], arch: &str, run: Value) -> Vec<u8> {
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    let mut add = |data: Vec<u8>| -> (String, usize) {
        let d = Digest::of(&data).to_string();
        let n = data.len();
        blobs.push(data);
        (d, n)
    };
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": run,
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(_, tar, _)| Digest::of(tar).to_string()).collect::<Vec<_>>()},
    });
    let (config_digest, config_size) = add(serde_json::to_vec(&config).unwrap());
    let layer_descs: Vec<Value> = layers
        .iter()
        .map(|(media, _, stored)| {
            let (d, n) = add(stored.clone());
            json!({"mediaType": media, "digest": d, "size": n})
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": layer_descs,
    });
    let (manifest_digest, manifest_size) = add(serde_json::to_vec(&manifest).unwrap());
    let nested = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000000", "size": 1, "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest_size, "platform": {"architecture": arch, "os": "linux"}},
        ],
    });
    let (nested_digest, nested_size) = add(serde_json::to_vec(&nested).unwrap());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": nested_digest, "size": nested_size}],
    });
    let mut b = tar::Builder::new(Vec::new());
    let mut put = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    };
    put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    put("index.json", &serde_json::to_vec(&index).unwrap());
    for blob in &blobs {
        let d = Digest::of(blob).to_string();
        put(&format!("blobs/sha256/{}", &d[7..]), blob);
    }
    b.into_inner().unwrap()
}

/// What `docker save` writes: `manifest.json`, the config and plain tar
/// layers under their own names.
fn saved_archive(layers: &[&[u8]]) -> Vec<u8> {
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| Digest::of(l).to_string()).collect::<Vec<_>>()},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_name = format!("{}.json", &Digest::of(&config).to_string()[7..]);
    let names: Vec<String> = (0..layers.len())
        .map(|i| format!("layer{i}/layer.tar"))
        .collect();
    let manifest = json!([{"Config": config_name, "RepoTags": ["saved:latest"], "Layers": names}]);
    let mut b = tar::Builder::new(Vec::new());
    let mut put = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    };
    put("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    put(&config_name, &config);
    for (name, layer) in names.iter().zip(layers) {
        put(name, layer);
    }
    b.into_inner().unwrap()
}

async fn import(d: &Daemon, name: &str, archive: Vec<u8>) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/templates/import?name={name}", d.url))
        .bearer_auth(&d.token)
        .body(archive)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// The ids `GET /api/v1/templates` lists.
async fn template_ids(d: &Daemon) -> Vec<String> {
    let (_, v) = d.get("/api/v1/templates").await;
    v["data"]["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

/// Creates a sandbox from `template` and runs `script` in it: its stdout.
async fn run_in(d: &Daemon, template: &str, script: &str) -> String {
    let (s, v) = d
        .post("/api/v1/sandboxes", json!({"template": template}))
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["data"]["sandbox_id"].as_str().unwrap().to_string();
    let r = d.sh(&id, script).await;
    r["stdout"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oci_image_becomes_a_template_sandboxes_run_from() {
    let d = Daemon::start().await;
    let archive = app_image(sandstone_oci::image::this_architecture());
    // Through the CLI, from a gzipped archive file.
    let file = d.data.path().join("image.tar.gz");
    std::fs::write(&file, gzip(&archive)).unwrap();
    let out = common::cli(
        &d,
        &["template", "import", "app", file.to_str().unwrap()],
        b"",
    );
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    assert!(
        common::text(&out.stdout).contains("3 layers (0 already here)"),
        "{}",
        common::text(&out.stdout)
    );
    assert!(template_ids(&d).await.iter().any(|t| t == "app"));

    let script = "cat /etc/greeting; ls /opt; ls /opt/dir; /opt/app/run.sh; \
        echo changed > /etc/greeting; cat /etc/greeting; echo $GREETING";
    assert_eq!(
        run_in(&d, "app", script).await,
        "hello from layer 2\napp\ndir\nb\nthe app runs\nchanged\nfrom the image\n"
    );

    // A second template sharing the layers unpacks nothing again; the
    // first sandbox's change is its own.
    let (s, v) = import(&d, "app2", archive.clone()).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        (
            v["data"]["layers"].as_u64(),
            v["data"]["layers_reused"].as_u64()
        ),
        (Some(3), Some(3)),
        "{v}"
    );
    assert_eq!(
        run_in(&d, "app2", "cat /etc/greeting").await,
        "hello from layer 2\n"
    );

    // An OCI layout directory imports too (the CLI packs it).
    let layout = d.data.path().join("layout");
    tar::Archive::new(&archive[..]).unpack(&layout).unwrap();
    let out = common::cli(
        &d,
        &["template", "import", "from-dir", layout.to_str().unwrap()],
        b"",
    );
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    assert_eq!(
        run_in(&d, "from-dir", "cat /etc/greeting").await,
        "hello from layer 2\n"
    );
    // Its command is shown, not run.
    let (_, v) = d.get("/api/v1/templates/from-dir").await;
    assert!(
        v["data"]["description"]
            .as_str()
            .unwrap()
            .contains("its command: /opt/app/run.sh"),
        "{v}"
    );

    // The same name again is a conflict.
    let (s, v) = import(&d, "app", archive).await;
    assert_eq!(s, 409, "{v}");
}

/// A template in use is not deleted (409 naming its users); unused, it
/// goes with the layers only it used, and the shared ones stay.
#[tokio::test(flavor = "multi_thread")]
async fn an_unused_image_template_is_deleted_with_its_own_layers() {
    let d = Daemon::start().await;
    let base = busybox_layer();
    let mine = tar_of(&[Ent::File("mine", b"only in one\n", 0o644)]);
    let plain = |tar: &[u8]| {
        (
            "application/vnd.oci.image.layer.v1.tar",
            tar.to_vec(),
            tar.to_vec(),
        )
    };
    let archive = |layers: &[(&str, Vec<u8>, Vec<u8>)]| {
        let refs: Vec<(&str, &[u8], Vec<u8>)> = layers
            .iter()
            .map(|(m, t, s)| (*m, &t[..], s.clone()))
            .collect();
        oci_archive(&refs, sandstone_oci::image::this_architecture())
    };
    let (s, v) = import(&d, "shared", archive(&[plain(&base)])).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = import(&d, "own", archive(&[plain(&base), plain(&mine)])).await;
    assert_eq!(s, 201, "{v}");
    let layers = || {
        std::fs::read_dir(d.data.path().join("layers"))
            .unwrap()
            .count()
    };
    assert_eq!(layers(), 2);
    let (_, v) = d
        .post("/api/v1/sandboxes", json!({"template": "own"}))
        .await;
    let id = v["data"]["sandbox_id"].as_str().unwrap().to_string();

    let (s, v) = d.delete("/api/v1/templates/own").await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains(&id), "{v}");
    let (s, v) = d.delete("/api/v1/templates/host").await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = d.delete("/api/v1/templates/nothing").await;
    assert_eq!(s, 404, "{v}");

    let (s, v) = d.delete(&format!("/api/v1/sandboxes/{id}")).await;
    assert!(s < 300, "{v}");
    let out = common::cli(&d, &["template", "rm", "own"], b"");
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    assert!(
        common::text(&out.stdout).contains("1 layers removed"),
        "{}",
        common::text(&out.stdout)
    );
    assert_eq!(layers(), 1, "the shared layer stays");
    let ids = template_ids(&d).await;
    assert!(
        ids.iter().any(|t| t == "shared") && !ids.iter().any(|t| t == "own"),
        "{ids:?}"
    );
    // The one left still runs.
    assert_eq!(
        run_in(&d, "shared", "echo still here").await,
        "still here\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_docker_save_archive_imports_too() {
    let d = Daemon::start().await;
    let base = busybox_layer();
    let app = tar_of(&[
        Ent::Dir("srv"),
        Ent::File("srv/saved", b"from docker save\n", 0o644),
    ]);
    let (s, v) = import(&d, "saved", saved_archive(&[&base, &app])).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        run_in(&d, "saved", "cat /srv/saved").await,
        "from docker save\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_images_are_refused_and_leave_nothing() {
    let d = Daemon::start().await;
    let base = busybox_layer();
    let arch = sandstone_oci::image::this_architecture();
    let layer = |tar: &[u8]| {
        (
            "application/vnd.oci.image.layer.v1.tar",
            tar.to_vec(),
            tar.to_vec(),
        )
    };
    let escape = tar_of(&[Ent::File("../escape", b"x", 0o644)]);
    let mut tampered = layer(&base);
    let at = tampered.2.len() / 2;
    tampered.2[at] ^= 0xff;
    let mut cases: Vec<(Vec<u8>, &str, &str)> = Vec::new();
    for (layers, arch, says) in [
        (vec![tampered], arch, "tampered"),
        (vec![layer(&base), layer(&escape)], arch, "(..)"),
        (vec![layer(&base)], "arm64", "linux/arm64"),
    ] {
        let refs: Vec<(&str, &[u8], Vec<u8>)> = layers
            .iter()
            .map(|(m, t, s)| (*m, &t[..], s.clone()))
            .collect();
        cases.push((oci_archive(&refs, arch), says, "a"));
    }
    cases.push((b"not a tar at all".to_vec(), "not an image", "b"));
    for (archive, says, _) in cases {
        let (s, v) = import(&d, "bad", archive).await;
        assert_eq!(s, 400, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "{says}: {v}");
    }
    let (s, v) = import(&d, "Bad/Name", saved_archive(&[&base])).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("`name`"),
        "{v}"
    );
    // Nothing half-made: no template, no staging dir, no partial layer.
    assert!(!template_ids(&d).await.iter().any(|t| t == "bad"));
    let leftovers: Vec<_> = ["templates", "layers"]
        .iter()
        .flat_map(|d2| std::fs::read_dir(d.data.path().join(d2)).unwrap().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The test registry (`tests/registry/server.py`, the OCI distribution
/// protocol with token auth) serving the layouts under its root; killed
/// when dropped.
struct Registry {
    child: std::process::Child,
    root: tempfile::TempDir,
    port: u16,
}

impl Registry {
    fn start(login: Option<(&str, &str)>) -> Registry {
        use std::io::BufRead;
        let root = tempfile::tempdir().unwrap();
        let script = format!(
            "{}/../../tests/registry/server.py",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(&script).arg("--root").arg(root.path());
        if let Some((user, password)) = login {
            cmd.args(["--user", user, "--password", password]);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 tests/registry/server.py");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the registry said {line:?}"));
        Registry { child, root, port }
    }

    /// Serves `archive` (an OCI layout as a tar) as `name:tag`.
    fn push(&self, name: &str, tag: &str, archive: &[u8]) -> std::path::PathBuf {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        tar::Archive::new(archive).unpack(&dir).unwrap();
        let index_file = dir.join("index.json");
        let mut index: Value =
            serde_json::from_slice(&std::fs::read(&index_file).unwrap()).unwrap();
        index["manifests"][0]["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        std::fs::write(&index_file, index.to_string()).unwrap();
        dir
    }

    fn image(&self, name: &str, tag: &str) -> String {
        format!("127.0.0.1:{}/{name}:{tag}", self.port)
    }

    /// How many times each blob was downloaded.
    async fn blob_gets(&self) -> Value {
        let url = format!("http://127.0.0.1:{}/_stats", self.port);
        let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        v["blob_gets"].clone()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A daemon whose registry logins (a Docker `config.json`) name `registry`.
async fn daemon_logged_in(registry: &Registry, user: &str, password: &str) -> Daemon {
    let mut d = Daemon::start().await;
    d.kill();
    let auth = base64_of(&format!("{user}:{password}"));
    let file = d.data.path().join("docker-config.json");
    let config = json!({"auths": {format!("127.0.0.1:{}", registry.port): {"auth": auth}}});
    std::fs::write(&file, config.to_string()).unwrap();
    d.serve_args = vec!["--registry-auth".into(), file.to_str().unwrap().into()];
    // Everything logged, to check the login is in none of it.
    d.log_level = "debug".into();
    d.spawn().await;
    d
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn create_template(d: &Daemon, id: &str, image: &str, extra: Value) -> (u16, Value) {
    let mut spec = json!({"mainContainer": {"image": image, "resources": {"memory": "512Mi"}}});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    d.post(
        "/api/v1/templates",
        json!({"template_id": id, "spec": spec}),
    )
    .await
}

/// The test image as an OCI layout archive: busybox, then the app's two
/// layers (gzip, gzip, zstd).
fn app_image(arch: &str) -> Vec<u8> {
    let base = busybox_layer();
    let (first, second) = app_layers();
    oci_archive(
        &[
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &base,
                gzip(&base),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &first,
                gzip(&first),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                &second,
                zstd::encode_all(&second[..], 3).unwrap(),
            ),
        ],
        arch,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_pulled_from_a_registry_with_a_login_becomes_a_template() {
    let registry = Registry::start(Some(("puller", "s3cret-pw")));
    let d = daemon_logged_in(&registry, "puller", "s3cret-pw").await;
    registry.push(
        "team/app",
        "v1",
        &app_image(sandstone_oci::image::this_architecture()),
    );
    let image = registry.image("team/app", "v1");
    let (s, v) = create_template(
        &d,
        "pulled",
        &image,
        json!({"envVars": {"EXTRA": "from the template"}, "description": "the app",
            "displayName": "The App", "tags": ["team", "app"], "pool": {"minIdle": 1, "maxIdle": 2}}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["data"]["spec"]["displayName"], "The App", "{v}");
    assert_eq!(v["data"]["spec"]["tags"], json!(["team", "app"]), "{v}");
    assert_eq!(
        v["data"]["spec"]["pool"],
        json!({"minIdle": 1, "maxIdle": 2}),
        "{v}"
    );
    // Its pool keeps a sandbox made ahead, though the daemon's default
    // is none.
    d.wait_warm(1).await;
    assert_eq!(
        v["data"]["spec"]["mainContainer"]["image"],
        image.as_str(),
        "{v}"
    );
    assert_eq!(
        v["data"]["spec"]["mainContainer"]["resources"]["memory"],
        "512Mi"
    );
    let (_, got) = d.get("/api/v1/templates/pulled").await;
    assert_eq!(got["data"]["template_id"], "pulled", "{got}");
    assert_eq!(got["data"]["description"], "the app", "{got}");
    assert_eq!(
        run_in(
            &d,
            "pulled",
            "cat /etc/greeting; ls /opt/dir; /opt/app/run.sh; echo $GREETING; echo $EXTRA"
        )
        .await,
        "hello from layer 2\nb\nthe app runs\nfrom the image\nfrom the template\n"
    );
    // The template's memory is its sandboxes' default limit.
    let (s, v) = d
        .post("/api/v1/sandboxes", json!({"template": "pulled"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let sid = v["data"]["sandbox_id"].as_str().unwrap();
    assert_eq!(common::memory_limit_of(sid).as_deref(), Some("536870912"));
    // Another template from the same image downloads no layer again (the
    // host has them all unpacked): only the config, which names them.
    let before = registry.blob_gets().await;
    // Through the CLI.
    let out = common::cli(&d, &["template", "pull", "pulled-again", &image], b"");
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    assert!(
        common::text(&out.stdout).contains(&image),
        "{}",
        common::text(&out.stdout)
    );
    let after = registry.blob_gets().await;
    let again: Vec<&String> = after
        .as_object()
        .unwrap()
        .iter()
        .filter(|(digest, n)| before[digest.as_str()] != **n)
        .map(|(digest, _)| digest)
        .collect();
    let config = registry.root.path().join("team/app/blobs/sha256");
    assert_eq!(again.len(), 1, "fetched again: {again:?}");
    let size = std::fs::metadata(config.join(&again[0][7..]))
        .unwrap()
        .len();
    assert!(size < 1024, "a layer was fetched again: {again:?}");
    assert_eq!(
        run_in(&d, "pulled-again", "cat /etc/greeting").await,
        "hello from layer 2\n"
    );
    // The name is taken now; a digest-pinned reference pulls the same.
    let (s, v) = create_template(&d, "pulled", &image, json!({})).await;
    assert_eq!(s, 409, "{v}");
    // The login never shows: not in an answer, not in the daemon's log.
    let (_, listed) = d.get("/api/v1/templates").await;
    assert!(!listed.to_string().contains("s3cret-pw"));
    let log = d.log();
    assert!(log.contains("pulled") && !log.contains("s3cret-pw"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_pulls_are_clear_errors_and_leave_no_template() {
    let registry = Registry::start(Some(("puller", "right")));
    let d = daemon_logged_in(&registry, "puller", "right").await;
    let arch = sandstone_oci::image::this_architecture();
    // A blob the registry serves corrupted.
    let odd = tar_of(&[Ent::Dir("srv"), Ent::File("srv/odd", b"odd\n", 0o644)]);
    let base = busybox_layer();
    let tampered = oci_archive(
        &[
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &base,
                gzip(&base),
            ),
            ("application/vnd.oci.image.layer.v1.tar", &odd, odd.clone()),
        ],
        arch,
    );
    let dir = registry.push("team/tampered", "v1", &tampered);
    let blob = dir
        .join("blobs/sha256")
        .join(&Digest::of(&odd).to_string()[7..]);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[600] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    // A blob longer than its descriptor says: cut off, not stored.
    let dir = registry.push("team/long", "v1", &tampered);
    let blob = dir
        .join("blobs/sha256")
        .join(&Digest::of(&odd).to_string()[7..]);
    let mut bytes = odd.clone();
    bytes.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&blob, bytes).unwrap();
    registry.push("team/arm", "v1", &app_image("arm64"));
    let wrong_login = Registry::start(Some(("someone", "else")));
    wrong_login.push("team/app", "v1", &app_image(arch));
    for (id, image, status, says) in [
        (
            "tampered",
            registry.image("team/tampered", "v1"),
            503,
            "tampered",
        ),
        (
            "long",
            registry.image("team/long", "v1"),
            503,
            "sent more than",
        ),
        (
            "arm",
            registry.image("team/arm", "v1"),
            400,
            &format!("linux/{arch}") as &str,
        ),
        (
            "missing",
            registry.image("team/none", "v1"),
            400,
            "is not in registry",
        ),
        (
            "nologin",
            wrong_login.image("team/app", "v1"),
            400,
            "refused the credentials",
        ),
        (
            "badref",
            "Not A Reference".to_string(),
            400,
            "spec.mainContainer.image",
        ),
    ] {
        let (s, v) = create_template(&d, id, &image, json!({})).await;
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(s == status && msg.contains(says), "{id}: {s} {v}");
        let (s, _) = d.get(&format!("/api/v1/templates/{id}")).await;
        assert_eq!(s, 404, "{id} was left behind");
    }
    // A pool that cannot be, and fields Sandstone does not act on, are
    // refused by name.
    for (extra, field) in [
        (json!({"pool": {"minIdle": 3, "maxIdle": 2}}), "spec.pool"),
        (json!({"pool": {"minIdle": 1, "maxIdle": 500}}), "spec.pool"),
        (json!({"tags": [""]}), "spec.tags[0]"),
        (json!({"pod": {"nodeSelector": {}}}), "spec.pod"),
    ] {
        let (s, v) = create_template(&d, "odd", &registry.image("team/arm", "v1"), extra).await;
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(s == 400 && msg.contains(field), "{field}: {v}");
    }
    // Nothing half-made: no template dir, no unpacked layer of the
    // tampered image (its good base layer may stay for the next pull).
    let odd_layer = d
        .data
        .path()
        .join("layers")
        .join(&Digest::of(&odd).to_string()[7..]);
    assert!(!odd_layer.exists());
    let templates: Vec<String> = std::fs::read_dir(d.data.path().join("templates"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !templates.iter().any(|t| t.starts_with('.')
            || ["tampered", "long", "arm", "missing", "nologin"].contains(&t.as_str())),
        "{templates:?}"
    );
}

/// A pull resumes the blobs an interrupted one left (`.partial`, fetched
/// from where it stopped) and checks the whole: a corrupt prefix is caught
/// and dropped, and the next pull succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_pull_resumes_what_it_fetched() {
    let registry = Registry::start(None);
    let d = Daemon::start().await;
    let app = app_image(sandstone_oci::image::this_architecture());
    registry.push("team/app", "v1", &app);
    let base = gzip(&busybox_layer());
    let hex = Digest::of(&base).to_string()[7..].to_string();
    let blobs = d.data.path().join("templates/.pull-resumed/blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    // Half of the base layer, one byte of it wrong: only a resumed
    // download keeps it, and only a check of the whole blob catches it.
    let mut prefix = base[..base.len() / 2].to_vec();
    prefix[10] ^= 0xff;
    std::fs::write(blobs.join(format!("{hex}.partial")), &prefix).unwrap();
    let image = registry.image("team/app", "v1");
    let (s, v) = create_template(&d, "resumed", &image, json!({})).await;
    assert!(s == 503 && v.to_string().contains("tampered"), "{s} {v}");
    // The right prefix resumes to the right blob.
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(
        blobs.join(format!("{hex}.partial")),
        &base[..base.len() / 2],
    )
    .unwrap();
    let (s, v) = create_template(&d, "resumed", &image, json!({})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        run_in(&d, "resumed", "cat /etc/greeting").await,
        "hello from layer 2\n"
    );
}

/// An image whose `/etc/version` says `n`: busybox and one small layer.
fn versioned_image(n: &str) -> Vec<u8> {
    let base = busybox_layer();
    let content = format!("{n}\n");
    let top = tar_of(&[
        Ent::Dir("etc"),
        Ent::File("etc/version", content.as_bytes(), 0o644),
    ]);
    oci_archive(
        &[
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &base,
                gzip(&base),
            ),
            ("application/vnd.oci.image.layer.v1.tar", &top, top.clone()),
        ],
        sandstone_oci::image::this_architecture(),
    )
}

/// An update makes a new version for new sandboxes; a sandbox made
/// before keeps its files through a pause, and so do its snapshot and
/// fork; the template cannot be deleted while they live, and the earlier
/// version and its own layer go once nothing uses them.
#[tokio::test(flavor = "multi_thread")]
async fn an_updated_template_leaves_its_earlier_sandboxes_their_version() {
    let registry = Registry::start(None);
    let d = Daemon::start().await;
    registry.push("team/tool", "latest", &versioned_image("one"));
    let image = registry.image("team/tool", "latest");
    let (s, v) = create_template(&d, "tool", &image, json!({"envVars": {"STAGE": "first"}})).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = d
        .post("/api/v1/sandboxes", json!({"template": "tool"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let old = v["data"]["sandbox_id"].as_str().unwrap().to_string();
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{old}/snapshots"), json!({}))
        .await;
    assert_eq!(s, 201, "{v}");
    let snap = v["data"]["id"].as_str().unwrap().to_string();
    let layers_before = d.dir_entries("layers").len();

    // The same tag now names another image.
    std::fs::remove_dir_all(registry.root.path().join("team/tool")).unwrap();
    registry.push("team/tool", "latest", &versioned_image("two"));
    let put = |spec: Value| {
        d.req(
            reqwest::Method::PUT,
            "/api/v1/templates/tool",
            Some(json!({"spec": spec})),
        )
    };
    let (s, v) = put(
        json!({"mainContainer": {"image": image, "resources": {"memory": "256Mi"}},
        "envVars": {"STAGE": "second"}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["spec"]["envVars"]["STAGE"], "second", "{v}");
    let probe = "cat /etc/version; echo $STAGE";
    assert_eq!(run_in(&d, "tool", probe).await, "two\nsecond\n");
    let kept = |id: String| {
        let d = &d;
        async move {
            let r = d.sh(&id, probe).await;
            r["stdout"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(kept(old.clone()).await, "one\nfirst\n");
    // Across a pause the sandbox keeps its version.
    for op in ["pause", "resume"] {
        let (s, v) = d
            .post(&format!("/api/v1/sandboxes/{old}/{op}"), json!({}))
            .await;
        assert_eq!(s, 200, "{op}: {v}");
    }
    assert_eq!(kept(old.clone()).await, "one\nfirst\n");
    let (_, v) = d.get(&format!("/api/v1/sandboxes/{old}")).await;
    assert_eq!(v["data"]["template_id"], "tool", "{v}");
    // So do its fork and its snapshot.
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{old}/fork"), json!({}))
        .await;
    assert_eq!(s, 201, "{v}");
    let fork = v["data"]["sandbox"]["id"].as_str().unwrap().to_string();
    assert_eq!(kept(fork.clone()).await, "one\nfirst\n");
    let (s, v) = d
        .post(
            "/api/v1/sandboxes",
            json!({"template": "tool", "snapshot_id": snap}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let restored = v["data"]["sandbox_id"].as_str().unwrap().to_string();
    assert_eq!(kept(restored.clone()).await, "one\nfirst\n");
    // The earlier version's own layer is kept meanwhile.
    assert_eq!(d.dir_entries("layers").len(), layers_before + 1);

    // In use, it is not deleted: the answer names a user.
    let (s, v) = d.delete("/api/v1/templates/tool").await;
    assert_eq!(s, 409, "{v}");
    assert!(v.to_string().contains(&old), "{v}");
    // Only an image template has versions; bad specs name their field.
    let (s, v) = d
        .req(
            reqwest::Method::PUT,
            "/api/v1/templates/host",
            Some(json!({"spec": {"mainContainer": {"image": "host", "resources": {"memory": "256Mi"}}}})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    let (s, v) =
        put(json!({"mainContainer": {"image": image, "resources": {"memory": "lots"}}})).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v.to_string()
            .contains("spec.mainContainer.resources.memory"),
        "{v}"
    );
    let (s, v) = d
        .req(
            reqwest::Method::PUT,
            "/api/v1/templates/nothing-here",
            Some(json!({"spec": {"mainContainer": {"image": image, "resources": {"memory": "256Mi"}}}})),
        )
        .await;
    assert_eq!(s, 404, "{v}");

    // Once its users are gone, the next update prunes the earlier
    // version and the layer only it had.
    for id in [&old, &fork, &restored] {
        let (s, v) = d.delete(&format!("/api/v1/sandboxes/{id}")).await;
        assert!(s == 200 || s == 202, "{v}");
    }
    let (s, v) = d
        .delete(&format!("/api/v1/sandbox-rootfs-snapshots/{snap}"))
        .await;
    assert!(s == 200 || s == 204, "{v}");
    let (s, v) = put(
        json!({"mainContainer": {"image": image, "resources": {"memory": "256Mi"}},
        "envVars": {"STAGE": "third"}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(run_in(&d, "tool", probe).await, "two\nthird\n");
    let mut tries = 0;
    while d.dir_entries("layers").len() != layers_before {
        tries += 1;
        assert!(tries < 50, "layers: {:?}", d.dir_entries("layers"));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        put(
            json!({"mainContainer": {"image": image, "resources": {"memory": "256Mi"}},
            "envVars": {"STAGE": "third"}}),
        )
        .await;
    }
    let versions: Vec<String> = d
        .dir_entries("templates")
        .into_iter()
        .filter(|n| n.starts_with("tool@"))
        .collect();
    assert!(versions.len() <= 1, "{versions:?}");

    // The operator may force a template in use away: no new sandbox gets
    // it, while the one that has it keeps running and resuming on it;
    // once that is gone, a prune removes what it stood on.
    let (s, v) = d
        .post("/api/v1/sandboxes", json!({"template": "tool"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let last = v["data"]["sandbox_id"].as_str().unwrap().to_string();
    let (s, v) = d.delete("/api/v1/templates/tool?force=maybe").await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = d.delete("/api/v1/templates/tool?force=true").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(d.get("/api/v1/templates/tool").await.0, 404);
    assert!(!template_ids(&d).await.contains(&"tool".to_string()));
    let (s, _) = d
        .post("/api/v1/sandboxes", json!({"template": "tool"}))
        .await;
    assert_eq!(s, 404);
    for op in ["pause", "resume"] {
        let (s, v) = d
            .post(&format!("/api/v1/sandboxes/{last}/{op}"), json!({}))
            .await;
        assert_eq!(s, 200, "{op}: {v}");
    }
    assert_eq!(kept(last.clone()).await, "two\nthird\n");
    // Every sandbox goes (those `run_in` made of versions 2 and 3 too).
    let (_, v) = d.get("/api/v1/sandboxes").await;
    for sb in v["data"]["sandboxes"].as_array().unwrap() {
        let (s, v) = d
            .delete(&format!("/api/v1/sandboxes/{}", sb["id"].as_str().unwrap()))
            .await;
        assert!(s == 200 || s == 202, "{v}");
    }
    let mut removed = 0;
    for _ in 0..50 {
        let (s, v) = d.post("/api/v1/templates/prune", json!({})).await;
        assert_eq!(s, 200, "{v}");
        removed += v["data"]["versions_removed"].as_u64().unwrap();
        if removed == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(removed, 2, "{:?}", d.dir_entries("templates"));
    assert!(
        d.dir_entries("templates")
            .iter()
            .all(|n| !n.starts_with("tool")),
        "{:?}",
        d.dir_entries("templates")
    );
    assert!(
        d.dir_entries("layers").is_empty(),
        "{:?}",
        d.dir_entries("layers")
    );
}

/// An image's `User` and `WorkingDir` hold for every process: it runs as
/// that user (resolved in the image's `/etc/passwd`), in that directory
/// (made, and the user's, when the image lacks it); a user the image does
/// not know is a clear error on the claim.
#[tokio::test(flavor = "multi_thread")]
async fn an_images_user_and_working_dir_hold_for_its_processes() {
    let d = Daemon::start().await;
    let base = busybox_layer();
    let accounts = tar_of(&[
        Ent::Dir("etc"),
        Ent::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
            0o644,
        ),
        Ent::File("etc/group", b"root:x:0:\napp:x:1000:\n", 0o644),
        Ent::Symlink("bin/id", "busybox"),
        Ent::Symlink("bin/pwd", "busybox"),
        Ent::Symlink("bin/touch", "busybox"),
        Ent::Symlink("bin/stat", "busybox"),
    ]);
    let layers = |user: &str| {
        oci_archive_with(
            &[
                (
                    "application/vnd.oci.image.layer.v1.tar",
                    &base,
                    base.clone(),
                ),
                (
                    "application/vnd.oci.image.layer.v1.tar",
                    &accounts,
                    accounts.clone(),
                ),
            ],
            sandstone_oci::image::this_architecture(),
            json!({"Env": ["PATH=/bin"], "User": user, "WorkingDir": "/home/app/src"}),
        )
    };
    let (s, v) = import(&d, "as-app", layers("app")).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        run_in(
            &d,
            "as-app",
            "id -u; id -g; pwd; echo $HOME; touch made && stat -c %u made; \
             touch /workspace/mine && echo workspace ok"
        )
        .await,
        "1000\n1000\n/home/app/src\n/home/app\n1000\nworkspace ok\n"
    );
    let (s, v) = import(&d, "as-ghost", layers("ghost")).await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("\\\"ghost\\\" is not in"), "{v}");
    assert!(!template_ids(&d).await.contains(&"as-ghost".to_string()));
}

/// An image pushed by a real client (skopeo) to the daemon's own registry,
/// with the login `POST /api/v1/registry/credentials` hands out, becomes a
/// template; a wrong login is refused, and a template may name only what
/// was pushed.
#[tokio::test(flavor = "multi_thread")]
async fn an_image_pushed_to_the_daemons_registry_becomes_a_template() {
    let d = Daemon::start().await;
    let (s, v) = d
        .post(
            "/api/v1/registry/credentials",
            json!({"targetImage": "team/app:v1"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let c = &v["data"];
    let push = c["pushImage"].as_str().unwrap().to_string();
    assert_eq!(
        push,
        format!("{}/team/app:v1", c["pushRegistry"].as_str().unwrap())
    );
    let login = format!(
        "{}:{}",
        c["username"].as_str().unwrap(),
        c["password"].as_str().unwrap()
    );
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar");
    std::fs::write(
        &archive,
        app_image(sandstone_oci::image::this_architecture()),
    )
    .unwrap();
    let skopeo = |creds: &str, dest: &str| {
        std::process::Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--dest-tls-verify=false",
                "--dest-creds",
                creds,
            ])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{dest}"))
            .output()
            .expect("skopeo (apt-get install skopeo; .ci/run does)")
    };
    // A login not handed out is refused.
    let out = skopeo("sandstone:srp_guessed", &push);
    assert!(!out.status.success());
    assert!(
        common::text(&out.stderr)
            .to_lowercase()
            .contains("unauthorized"),
        "{}",
        common::text(&out.stderr)
    );
    let out = skopeo(&login, &push);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    // Pushed again: every blob is there already.
    let out = skopeo(&login, &push);
    assert!(out.status.success(), "{}", common::text(&out.stderr));

    let (s, v) = create_template(&d, "pushed", c["pullImage"].as_str().unwrap(), json!({})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        run_in(&d, "pushed", "cat /etc/greeting; ls /opt/dir").await,
        "hello from layer 2\nb\n"
    );
    // Only what was pushed.
    let missing = push.replace(":v1", ":v2");
    let (s, v) = create_template(&d, "not-pushed", &missing, json!({})).await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("was not pushed"), "{v}");
    // The registry needs a login to read too.
    let url = format!("{}/v2/team/app/manifests/v1", d.url);
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let (s, v) = d
        .post(
            "/api/v1/registry/credentials",
            json!({"targetImage": "Bad Name"}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("targetImage"), "{v}");
}
