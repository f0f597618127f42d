//! `sandstone bench --durable`: pause/resume, snapshot and fork latency for a
//! small and a large workspace (cost must not grow with size), claims from
//! the warm pool, and the memory a paused sandbox costs.

use crate::bench::{meminfo_kib, row, stats};
use anyhow::{Result, ensure};
use sandstone_api::MemoryKept;
use sandstone_client::Client;
use std::path::Path;
use std::time::{Duration, Instant};

/// The bytes of the files in `dir`; `None` when it cannot be read.
fn dir_bytes(dir: &Path) -> Option<u64> {
    let entries = std::fs::read_dir(dir).ok()?;
    Some(
        entries
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum(),
    )
}

async fn timed<F: std::future::Future<Output = sandstone_client::Result<T>>, T>(
    f: F,
) -> Result<(Duration, T)> {
    let t = Instant::now();
    let v = f.await?;
    Ok((t.elapsed(), v))
}

/// Latencies of pause, resume, snapshot and fork with `mib` MiB in /workspace.
async fn per_size(c: &Client, template: &str, n: usize, mib: u64) -> Result<()> {
    let id = c.claim(template, None).await?.sandbox_id;
    let fill = vec![
        "sh".into(),
        "-c".into(),
        format!("dd if=/dev/zero of=/workspace/blob bs=1M count={mib} 2>/dev/null && sync"),
    ];
    ensure!(
        c.run(&id, &fill, None, Some(600)).await?.exit_code == Some(0),
        "filling the workspace failed"
    );
    let (mut pauses, mut resumes, mut snaps, mut forks) = (vec![], vec![], vec![], vec![]);
    for _ in 0..n {
        pauses.push(timed(c.pause(&id)).await?.0);
        resumes.push(timed(c.resume(&id)).await?.0);
        let (t, s) = timed(c.snapshot(&id, None)).await?;
        snaps.push(t);
        c.delete_snapshot(&s.id).await?;
        let (t, f) = timed(c.fork(&id)).await?;
        forks.push(t);
        c.delete(&f.sandbox.id).await?;
    }
    let label = |op: &str| format!("{op} ({mib} MiB workspace)");
    row(&label("pause"), &stats(pauses), "");
    row(&label("resume"), &stats(resumes), "");
    row(&label("snapshot (running)"), &stats(snaps), "");
    row(&label("fork (running)"), &stats(forks), "");
    c.delete(&id).await?;
    Ok(())
}

async fn warm_ready(c: &Client) -> Result<u64> {
    Ok(c.metrics()
        .await?
        .lines()
        .find_map(|l| l.strip_prefix("sandstone_warm_pool_ready "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Pause and resume of a sandbox whose process holds 200 MiB: with its
/// memory (written to disk by CRIU and restored, or frozen in place and
/// continued where the daemon has no CRIU), and plainly (ended, started
/// again) as the baseline, alternating on the same sandbox; and the host
/// memory a pause with memory gives back.
async fn with_memory(c: &Client, template: &str, n: usize, data_dir: &Path) -> Result<()> {
    let id = c.claim(template, None).await?.sandbox_id;
    let hold = |id: String| async move {
        let argv = [
            "python3",
            "-c",
            "import os, time\nb = os.urandom(200 << 20)\nopen('/tmp/held', 'w').close()\ntime.sleep(3600)",
        ]
        .map(String::from);
        c.start(&id, &argv, None, None, None).await?;
        let wait = ["sh", "-c", "while [ ! -e /tmp/held ]; do sleep 0.05; done"].map(String::from);
        ensure!(
            c.run(&id, &wait, None, Some(60)).await?.exit_code == Some(0),
            "the 200 MiB holder never started"
        );
        anyhow::Ok(())
    };
    hold(id.clone()).await?;
    let (mut pauses, mut resumes, mut plain_pauses, mut plain_resumes) =
        (vec![], vec![], vec![], vec![]);
    let (mut kept, mut freed, mut sizes) = (None, vec![], vec![]);
    let image = data_dir.join("memory").join(&id);
    for _ in 0..n {
        let before = meminfo_kib("AnonPages:") as i64;
        let (t, r) = timed(c.pause_with_memory(&id)).await?;
        freed.push((before - meminfo_kib("AnonPages:") as i64) / 1024);
        sizes.extend(dir_bytes(&image));
        kept = r.memory;
        pauses.push(t);
        resumes.push(timed(c.resume(&id)).await?.0);
        plain_pauses.push(timed(c.pause(&id)).await?.0);
        plain_resumes.push(timed(c.resume(&id)).await?.0);
        hold(id.clone()).await?;
    }
    let kept = match kept {
        Some(MemoryKept::Disk) => "written to disk (CRIU)",
        Some(MemoryKept::Frozen) => "frozen in place (no CRIU)",
        None => "not said",
    };
    row(&format!("pause with memory, {kept}"), &stats(pauses), "");
    row("resume with memory", &stats(resumes), "");
    row("pause, plain (baseline)", &stats(plain_pauses), "");
    row("resume, plain (baseline)", &stats(plain_resumes), "");
    freed.sort_unstable();
    println!(
        "{:<34} {:>8} MiB of anonymous memory (AnonPages, median)",
        "freed by a pause with memory",
        freed[freed.len() / 2]
    );
    sizes.sort_unstable();
    match sizes.get(sizes.len() / 2) {
        Some(b) => println!(
            "{:<34} {:>8.1} MiB on disk (median)",
            "checkpoint size with memory",
            *b as f64 / (1 << 20) as f64
        ),
        None => println!(
            "{:<34} {:>8} (nothing on disk here: frozen, or the daemon's data directory is elsewhere)",
            "checkpoint size with memory", "-"
        ),
    }
    c.delete(&id).await?;
    Ok(())
}

pub async fn run(
    c: &Client,
    template: &str,
    n: usize,
    paused: usize,
    data_dir: &Path,
) -> Result<()> {
    per_size(c, template, n, 10).await?;
    per_size(c, template, n, 1024).await?;
    with_memory(c, template, n, data_dir).await?;

    // Claims from the warm pool: wait for a ready member before each one.
    let mut claims = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..n {
        let deadline = Instant::now() + Duration::from_secs(30);
        while warm_ready(c).await? == 0 {
            ensure!(
                Instant::now() < deadline,
                "the warm pool is not filling (is --warm-pool 0?)"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (t, r) = timed(c.claim(template, None)).await?;
        claims.push(t);
        ids.push(r.sandbox_id);
    }
    row("claim from the warm pool", &stats(claims), "");
    for id in ids {
        c.delete(&id).await?;
    }

    // Paused sandboxes hold no process and no cgroup: only a row and files.
    let mut ids = Vec::new();
    for _ in 0..paused {
        let id = c.claim(template, None).await?.sandbox_id;
        c.pause(&id).await?;
        ids.push(id);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = meminfo_kib("MemAvailable:") as i64;
    for id in &ids {
        c.delete(id).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let freed = meminfo_kib("MemAvailable:") as i64 - held;
    println!(
        "{:<34} {:>8.1} KiB host memory per paused sandbox (MemAvailable gained by deleting {paused} paused ones)",
        "paused sandboxes",
        freed as f64 / paused.max(1) as f64,
    );
    Ok(())
}
