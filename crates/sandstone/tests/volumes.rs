//! Sandbox volumes (`/api/v1/sandboxvolumes`, the claim's `mounts`):
//! workspaces that outlive their sandboxes and move between templates,
//! access modes, snapshots, restores and forks, and their files without a
//! sandbox, where no path leads out of the volume.

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::Daemon;
use serde_json::{Value, json};
use std::process::Command;

/// A new volume's id.
async fn volume(d: &Daemon, body: Value) -> String {
    let (s, v) = d.post("/api/v1/sandboxvolumes", body).await;
    assert_eq!(s, 201, "{v}");
    v["data"]["id"].as_str().unwrap().to_string()
}

/// Claims a sandbox of `template` with `mounts`; returns (status, body).
async fn claim(d: &Daemon, template: &str, mounts: Value) -> (u16, Value) {
    d.post(
        "/api/v1/sandboxes",
        json!({"template": template, "mounts": mounts}),
    )
    .await
}

/// A sandbox of `template` with volume `vol` at `at`.
async fn mounted(d: &Daemon, template: &str, vol: &str, at: &str) -> String {
    let (s, v) = claim(
        d,
        template,
        json!([{"sandboxvolume_id": vol, "mount_point": at}]),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["data"]["bootstrap_mounts"][0]["state"], "mounted", "{v}");
    v["data"]["sandbox_id"].as_str().unwrap().to_string()
}

/// The effective and bounding capabilities of volume `vol`'s file
/// helper (found by its root, the volume).
fn helper_capabilities(vol: &str) -> (String, String) {
    let helper = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .find(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let root = std::fs::read_link(e.path().join("root")).unwrap_or_default();
            cmdline.ends_with(b"volume-files\0") && root.ends_with(vol)
        })
        .expect("the volume's file helper runs");
    let status = std::fs::read_to_string(helper.path().join("status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_string()
    };
    (field("CapEff:"), field("CapBnd:"))
}

fn out(v: &Value) -> String {
    v["stdout"].as_str().unwrap_or_default().to_string()
}

/// Writes `body` to `path` in volume `vol` through the volume files API.
async fn put_file(d: &Daemon, vol: &str, path: &str, body: impl Into<reqwest::Body>) {
    let url = format!("{}/api/v1/sandboxvolumes/{vol}/files?path={path}", d.url);
    let r = d.http.post(url).bearer_auth(&d.token).body(body).send();
    let r = r.await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

/// The text of `path` in volume `vol`, through the volume files API.
async fn get_file(d: &Daemon, vol: &str, path: &str) -> String {
    let url = format!("{}/api/v1/sandboxvolumes/{vol}/files?path={path}", d.url);
    let r = d.http.get(url).bearer_auth(&d.token).send().await.unwrap();
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_volume_outlives_its_sandbox_and_moves_to_another_template() {
    let d = Daemon::start().await;
    let vol = volume(&d, json!({"size": "1Gi"})).await;
    let a = mounted(&d, "host", &vol, "/workspace").await;
    d.sh(
        &a,
        "echo kept > /workspace/notes && mkdir /workspace/src && echo 'int x;' > /workspace/src/a.c \
         && chown 1000:1000 /workspace/src/a.c && chmod 640 /workspace/src/a.c",
    )
    .await;
    let before = out(&d
        .sh(&a, "cd /workspace && stat -c '%n %u:%g %a' notes src/a.c")
        .await);
    let (_, v) = d.get(&format!("/api/v1/sandboxvolumes/{vol}")).await;
    assert_eq!(v["data"]["mounted_by"], json!([a]), "{v}");
    // The listing shows the same (its mounts come from one query).
    let other = volume(&d, json!({})).await;
    let (_, list) = d.get("/api/v1/sandboxvolumes").await;
    let mounted_by = |id: &str| {
        let all = list["data"].as_array().unwrap();
        all.iter().find(|v| v["id"] == id).unwrap()["mounted_by"].clone()
    };
    assert_eq!(
        (mounted_by(&vol), mounted_by(&other)),
        (json!([a]), json!([]))
    );
    // The sandbox goes; the volume stays, mounted by nothing.
    let (s, _) = d.delete(&format!("/api/v1/sandboxes/{a}")).await;
    assert_eq!(s, 202);
    let (s, v) = d.get(&format!("/api/v1/sandboxvolumes/{vol}")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["mounted_by"], json!([]), "{v}");

    // Another template: one captured from a sandbox, with a file of its own.
    let src = d.create(json!({})).await;
    d.sh(&src, "echo other > /etc/other-template").await;
    let capture = json!({"template_id": "other", "sandbox_id": src});
    let (s, v) = d.post("/api/v1/templates/from-sandbox", capture).await;
    assert_eq!(s, 202, "{v}");
    let b = mounted(&d, "other", &vol, "/workspace").await;
    let after = out(&d
        .sh(
            &b,
            "cat /etc/other-template; cd /workspace && stat -c '%n %u:%g %a' notes src/a.c",
        )
        .await);
    assert_eq!(after, format!("other\n{before}"));
    assert_eq!(out(&d.sh(&b, "cat /workspace/notes").await), "kept\n");

    // A paused sandbox keeps its mount on resume.
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{b}/pause"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(out(&d.sh(&b, "cat /workspace/notes").await), "kept\n");
    // Mounted: the volume is not deleted, and the answer names who holds it.
    let (s, v) = d.delete(&format!("/api/v1/sandboxvolumes/{vol}")).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains(&b), "{v}");
    // A mount can only be a volume of the caller's, at a sane path.
    for (mounts, needle) in [
        (
            json!([{"sandboxvolume_id": "vol-nope", "mount_point": "/data"}]),
            "vol-nope",
        ),
        (
            json!([{"sandboxvolume_id": vol, "mount_point": "data"}]),
            "mount_point",
        ),
        (
            json!([{"sandboxvolume_id": vol, "mount_point": "/proc/x"}]),
            "mount_point",
        ),
        (
            json!([{"sandboxvolume_id": vol, "mount_point": "/a/../b"}]),
            "mount_point",
        ),
    ] {
        let (s, v) = claim(&d, "host", mounts).await;
        assert!(
            (s == 400 || s == 404) && v.to_string().contains(needle),
            "{s} {v}"
        );
    }
    let (s, v) = d
        .post(
            "/api/v1/sandboxes",
            json!({"template": "host", "config": {"mounts": [{"sandboxvolume_id": vol, "mount_point": "/x"}]}}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    d.delete(&format!("/api/v1/sandboxes/{b}")).await;
    let (s, v) = d.delete(&format!("/api/v1/sandboxvolumes/{vol}")).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = d.get(&format!("/api/v1/sandboxvolumes/{vol}")).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn access_modes_are_enforced() {
    let d = Daemon::start().await;
    let rwo = volume(&d, json!({})).await;
    let one = mounted(&d, "host", &rwo, "/data").await;
    let (s, v) = claim(
        &d,
        "host",
        json!([{"sandboxvolume_id": rwo, "mount_point": "/data"}]),
    )
    .await;
    assert_eq!(s, 409, "a second read-write mount: {v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(&one),
        "{v}"
    );
    // Nothing of the refused claim is left: one sandbox only.
    let (_, v) = d.get("/api/v1/sandboxes").await;
    assert_eq!(v["data"]["sandboxes"].as_array().unwrap().len(), 1, "{v}");

    // ROX: read-only in two sandboxes at once.
    let rox = volume(&d, json!({"access_mode": "ROX"})).await;
    let (s, _) = d
        .post(
            &format!("/api/v1/sandboxvolumes/{rox}/files?path=seed.txt"),
            json!("x"),
        )
        .await;
    assert_eq!(s, 200);
    let r1 = mounted(&d, "host", &rox, "/ro").await;
    let r2 = mounted(&d, "host", &rox, "/ro").await;
    for sb in [&r1, &r2] {
        let r = d
            .sh(sb, "cat /ro/seed.txt; touch /ro/new 2>&1; echo rc=$?")
            .await;
        let shown = out(&r);
        assert!(
            shown.contains("Read-only file system") && shown.ends_with("rc=1\n"),
            "{shown}"
        );
    }
    // RWX: read-write in two at once, each seeing the other's writes.
    let rwx = volume(&d, json!({"access_mode": "RWX"})).await;
    let w1 = mounted(&d, "host", &rwx, "/shared").await;
    let w2 = mounted(&d, "host", &rwx, "/shared").await;
    d.sh(&w1, "echo from-w1 > /shared/f").await;
    assert_eq!(out(&d.sh(&w2, "cat /shared/f").await), "from-w1\n");
    // A hard link from the sandbox's own files into the volume crosses a
    // mount: refused by the kernel.
    let r = d
        .sh(&w1, "ln /etc/hostname /shared/h 2>&1; echo rc=$?")
        .await;
    assert!(out(&r).ends_with("rc=1\n"), "{r}");
    d.rejects(
        "/api/v1/sandboxvolumes",
        json!({"access_mode": "RWM"}),
        "access_mode",
    )
    .await;
    d.rejects("/api/v1/sandboxvolumes", json!({"size": "1Ki"}), "size")
        .await;
    d.rejects(
        "/api/v1/sandboxvolumes",
        json!({"default_posix_uid": -1}),
        "default_posix_uid",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_restore_and_forks_diverge() {
    let d = Daemon::start().await;
    let vol = volume(&d, json!({})).await;
    put_file(&d, &vol, "f", "one").await;
    let (s, snap) = d
        .post(
            &format!("/api/v1/sandboxvolumes/{vol}/snapshots"),
            json!({"name": "before"}),
        )
        .await;
    assert_eq!(s, 201, "{snap}");
    let snap = snap["data"]["id"].as_str().unwrap().to_string();
    put_file(&d, &vol, "f", "two").await;
    assert_eq!(get_file(&d, &vol, "f").await, "two");
    // Mounted read-write: no restore.
    let sb = mounted(&d, "host", &vol, "/data").await;
    let restore = format!("/api/v1/sandboxvolumes/{vol}/snapshots/{snap}/restore");
    let (s, v) = d.post(&restore, json!({})).await;
    assert_eq!(s, 409, "{v}");
    d.delete(&format!("/api/v1/sandboxes/{sb}")).await;
    let (s, v) = d.post(&restore, json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(get_file(&d, &vol, "f").await, "one");

    // A fork shares the files, then each goes its own way.
    let (s, v) = d
        .post(&format!("/api/v1/sandboxvolumes/{vol}/fork"), json!({}))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["data"]["source_volume_id"], vol.as_str());
    let fork = v["data"]["id"].as_str().unwrap().to_string();
    put_file(&d, &vol, "f", "parent").await;
    put_file(&d, &fork, "f", "child").await;
    assert_eq!(get_file(&d, &vol, "f").await, "parent");
    assert_eq!(get_file(&d, &fork, "f").await, "child");
    // A new volume from the snapshot.
    let from = volume(&d, json!({"snapshot_id": snap})).await;
    assert_eq!(get_file(&d, &from, "f").await, "one");
    // As root (the default owner), the helper keeps only the capabilities
    // of file ownership: chown, DAC override and read-search, fowner, fsetid.
    let only_files = "000000000000001f".to_string();
    assert_eq!(helper_capabilities(&from), (only_files.clone(), only_files));
    let (s, v) = d
        .get(&format!("/api/v1/sandboxvolumes/{vol}/snapshots"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["data"].as_array().unwrap().len(), 1, "{v}");
    let (s, _) = d
        .delete(&format!("/api/v1/sandboxvolumes/{vol}/snapshots/{snap}"))
        .await;
    assert_eq!(s, 200);
}

/// What volume `v` is charged for, as of a pool commit made now (usage is
/// the pool's as of its last commit).
async fn metered(d: &Daemon, v: &str) -> u64 {
    let synced = Command::new("sync").arg("-f").arg(d.pool_root()).status();
    assert!(synced.unwrap().success());
    let (s, v) = d.get(&format!("/api/v1/sandboxvolumes/{v}")).await;
    assert_eq!(s, 200, "{v}");
    v["data"]["metered_storage_bytes"].as_u64().unwrap()
}

/// The pool charges each byte to the volume that wrote it (btrfs simple
/// quotas): a fork or a snapshot shares its source's bytes, is charged only
/// for what it writes, and costs the same whatever the source holds.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_is_charged_only_for_what_it_writes() {
    let d = Daemon::start().await;
    let vol = volume(&d, json!({"size": "64Mi"})).await;
    let mib = |n: usize| {
        (0..n << 20)
            .map(|i| (i * 7 + i / 4093) as u8)
            .collect::<Vec<u8>>()
    };
    put_file(&d, &vol, "big", mib(40)).await;
    let source = metered(&d, &vol).await;
    assert!(source >= 40 << 20, "{source}");

    let (s, v) = d
        .post(&format!("/api/v1/sandboxvolumes/{vol}/fork"), json!({}))
        .await;
    assert_eq!(s, 201, "{v}");
    let fork = v["data"]["id"].as_str().unwrap().to_string();
    put_file(&d, &fork, "small", mib(1)).await;
    let charged = metered(&d, &fork).await;
    assert!(
        (1 << 20..4 << 20).contains(&charged),
        "the fork is charged {charged}"
    );
    // Its cap (64 MiB, inherited) bounds only what it writes: 40 MiB more fit.
    put_file(&d, &fork, "more", mib(40)).await;

    let (s, v) = d
        .post(
            &format!("/api/v1/sandboxvolumes/{vol}/snapshots"),
            json!({"name": "s"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let held = v["data"]["size_bytes"].as_u64().unwrap();
    assert!(held >= 40 << 20, "the snapshot holds {held}");
    // Deleting the file the snapshot still holds frees nothing on the pool,
    // so the volume is still charged for it.
    let url = format!("{}/api/v1/sandboxvolumes/{vol}/files?path=big", d.url);
    let r = d
        .http
        .delete(url)
        .bearer_auth(&d.token)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert!(metered(&d, &vol).await >= 40 << 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn files_without_a_sandbox_never_leave_the_volume() {
    let d = Daemon::start().await;
    let vol = volume(
        &d,
        json!({"default_posix_uid": 1000, "default_posix_gid": 1000}),
    )
    .await;
    let base = format!("{}/api/v1/sandboxvolumes/{vol}/files", d.url);
    let call = |method: reqwest::Method, url: String, body: Vec<u8>| {
        d.http
            .request(method, url)
            .bearer_auth(&d.token)
            .body(body)
            .send()
    };
    // Write (parents made, as in a sandbox), mkdir, read, list, stat, move.
    let r = call(
        reqwest::Method::POST,
        format!("{base}?path=dir/a.txt"),
        b"hello".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = call(
        reqwest::Method::POST,
        format!("{base}?path=made/deep&mkdir=true&recursive=true"),
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let r = call(
        reqwest::Method::GET,
        format!("{base}?path=/dir/a.txt"),
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(r.text().await.unwrap(), "hello");
    let (s, v) = d
        .get(&format!("/api/v1/sandboxvolumes/{vol}/files/list?path=dir"))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["entries"][0]["name"], "a.txt", "{v}");
    let (s, v) = d
        .post(
            &format!("/api/v1/sandboxvolumes/{vol}/files/move"),
            json!({"source": "dir/a.txt", "destination": "b.txt"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = d
        .get(&format!(
            "/api/v1/sandboxvolumes/{vol}/files/stat?path=b.txt"
        ))
        .await;
    assert_eq!((s, v["data"]["size"].as_i64()), (200, Some(5)), "{v}");

    // A tar import: counts, and what it made.
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(3);
    header.set_mode(0o644);
    tar.append_data(&mut header, "imp/x.txt", &b"xyz"[..])
        .unwrap();
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    tar.append_link(&mut link, "imp/l", "x.txt").unwrap();
    let body = tar.into_inner().unwrap();
    let r = call(reqwest::Method::PUT, format!("{base}/archive?path=/"), body)
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["data"],
        json!({"files": 1, "directories": 0, "symlinks": 1, "bytes": 3}),
        "{v}"
    );
    let r = call(reqwest::Method::GET, format!("{base}?path=imp/l"), vec![])
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "xyz");

    // In a sandbox: the files, owned by the volume's default owner.
    let sb = mounted(&d, "host", &vol, "/v").await;
    let r = d
        .sh(&sb, "stat -c '%u:%g' /v/b.txt /v/imp/x.txt; cat /v/b.txt")
        .await;
    assert_eq!(out(&r), "1000:1000\n1000:1000\nhello");
    // Escapes planted from inside: an absolute symlink to the host's
    // files, a relative one up, a directory symlink out.
    d.sh(
        &sb,
        "ln -s /etc/shadow /v/abs && ln -s ../../../../etc/passwd /v/up && ln -s /etc /v/etcdir",
    )
    .await;
    d.delete(&format!("/api/v1/sandboxes/{sb}")).await;
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    for path in [
        "abs",
        "up",
        "etcdir/passwd",
        "../../../../etc/passwd",
        "dir/../../etc/passwd",
    ] {
        let r = call(reqwest::Method::GET, format!("{base}?path={path}"), vec![])
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, 403, "{path}: {text}");
        assert!(!text.contains("root:x:0:0"), "{path} read the host's file");
        assert!(
            d.log().contains("leads out of the volume"),
            "no audit record for {path}"
        );
    }
    // Writes through an escape land nowhere.
    let marker = format!("/tmp/sandstone-volume-escape-{vol}");
    let link = format!("ln -s {marker} /v/w");
    let sb = mounted(&d, "host", &vol, "/v").await;
    d.sh(&sb, &link).await;
    d.delete(&format!("/api/v1/sandboxes/{sb}")).await;
    for path in ["w", &format!("../../../../..{marker}")] {
        let r = call(
            reqwest::Method::POST,
            format!("{base}?path={path}"),
            b"pwned".to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
    assert!(
        !std::path::Path::new(&marker).exists(),
        "a write left the volume"
    );
    assert!(!host_passwd.is_empty());
    // Another team sees no volume.
    let (s, blue) = d.post("/teams", json!({"name": "blue"})).await;
    assert_eq!(s, 201);
    let (_, k) = d
        .post(
            "/api-keys",
            json!({"name": "b", "roles": ["developer"], "team_id": blue["data"]["id"]}),
        )
        .await;
    let key = k["data"]["key"].as_str().unwrap();
    let r = d
        .http
        .get(format!("{base}?path=b.txt"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The helper that served all this: chrooted into the volume, as its
    // default owner, with no capability.
    assert_eq!(helper_capabilities(&vol).0, "0000000000000000");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_makes_copies_mounts_snapshots_and_forks_volumes() {
    let d = Daemon::start().await;
    let run = |args: &[&str]| {
        let o = common::cli(&d, args, b"");
        assert!(o.status.success(), "{args:?}: {}", common::text(&o.stderr));
        common::text(&o.stdout).trim().to_string()
    };
    let vol = run(&["volume", "create", "--size", "1Gi", "--access-mode", "RWO"]);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("in.txt");
    std::fs::write(&local, "from the host\n").unwrap();
    run(&[
        "volume",
        "cp",
        local.to_str().unwrap(),
        &format!("{vol}:/in.txt"),
    ]);
    let sb = run(&["create", "-t", "host", "--mount", &format!("{vol}:/data")]);
    assert_eq!(out(&d.sh(&sb, "cat /data/in.txt").await), "from the host\n");
    d.sh(&sb, "echo made inside > /data/out.txt").await;
    let back = dir.path().join("out.txt");
    run(&[
        "volume",
        "cp",
        &format!("{vol}:out.txt"),
        back.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "made inside\n");
    let snap = run(&["volume", "snapshot", &vol]);
    assert!(snap.starts_with("vs-"), "{snap}");
    let fork = run(&["volume", "fork", &vol]);
    let listed = run(&["volume", "ls"]);
    assert!(
        listed.contains(&vol) && listed.contains(&fork) && listed.contains(&sb),
        "{listed}"
    );
    // Mounted: not removed.
    let o = common::cli(&d, &["volume", "rm", &vol], b"");
    assert!(!o.status.success());
    assert!(
        common::text(&o.stderr).contains(&sb),
        "{}",
        common::text(&o.stderr)
    );
    run(&["rm", &sb]);
    run(&["volume", "rm", &vol, &fork]);
    assert!(!run(&["volume", "ls"]).contains(&vol));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_declares_where_its_sandboxes_take_volumes() {
    let mut d = Daemon::set_up(&["--pool-gib", "4"], "").await;
    let declared = json!({"volume_mounts": [
        {"name": "work", "mountPath": "/workspace"},
        {"name": "reference", "mountPath": "/ref", "readOnly": true},
    ]});
    std::fs::write(
        d.data.path().join("templates/host/template.json"),
        declared.to_string(),
    )
    .unwrap();
    d.spawn().await;
    let (s, t) = d.get("/api/v1/templates/host").await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(
        t["data"]["spec"]["volumeMounts"][1]["mountPath"], "/ref",
        "{t}"
    );
    let vol = volume(&d, json!({})).await;
    let (s, v) = claim(
        &d,
        "host",
        json!([{"sandboxvolume_id": vol, "mount_point": "/elsewhere"}]),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("/workspace, /ref"), "{v}");
    // Read-only where the template says so, though the volume is RWO; a
    // read-only mount leaves the volume to a writer.
    let reader = mounted(&d, "host", &vol, "/ref").await;
    let r = d.sh(&reader, "touch /ref/x 2>&1; echo rc=$?").await;
    assert!(out(&r).contains("Read-only file system"), "{r}");
    let writer = mounted(&d, "host", &vol, "/workspace").await;
    d.sh(&writer, "echo w > /workspace/x").await;
    assert_eq!(out(&d.sh(&reader, "cat /ref/x").await), "w\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_volume_is_watched_without_a_sandbox() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let d = Daemon::start().await;
    let vol = volume(&d, json!({})).await;
    let url =
        format!("{}/api/v1/sandboxvolumes/{vol}/files/watch", d.url).replacen("http", "ws", 1);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", d.token).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let sub = json!({"action": "subscribe", "path": "/", "recursive": true});
    ws.send(Message::Text(sub.to_string().into()))
        .await
        .unwrap();
    let mut next = async || {
        let m = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("an event in time");
        let Some(Ok(Message::Text(t))) = m else {
            panic!("{m:?}")
        };
        serde_json::from_str::<Value>(&t).unwrap()
    };
    assert_eq!(next().await["type"], "subscribed");
    // Written from a sandbox that mounts it: the watch sees it.
    let sb = mounted(&d, "host", &vol, "/data").await;
    d.sh(&sb, "echo x > /data/new.txt").await;
    loop {
        let v = next().await;
        assert_eq!(v["type"], "event", "{v}");
        if v["path"] == "/new.txt" {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_sandbox_takes_volumes_live() {
    let mut d = Daemon::set_up(&["--pool-gib", "4"], "").await;
    d.warm_pool = 1;
    d.spawn().await;
    d.wait_warm(1).await;
    let vol = volume(&d, json!({"default_posix_uid": 1000})).await;
    put_file(&d, &vol, "seed", "seeded").await;
    let pooled = d.volumes();
    let sb = mounted(&d, "host", &vol, "/workspace").await;
    assert!(
        pooled.contains(&sb),
        "the claim did not take the warm sandbox"
    );
    let r = d.sh(&sb, "cat /workspace/seed; echo more > /workspace/more; stat -c %u /workspace/seed /workspace").await;
    assert_eq!(out(&r), "seeded1000\n1000\n", "{r}");
    // The volume stays bound across a pause (its next start binds it).
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{sb}/pause"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(out(&d.sh(&sb, "cat /workspace/more").await), "more\n");
    // RWO still: a second claim is refused.
    let (s, v) = claim(
        &d,
        "host",
        json!([{"sandboxvolume_id": vol, "mount_point": "/x"}]),
    )
    .await;
    assert_eq!(s, 409, "{v}");
}
