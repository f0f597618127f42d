//! `sandstone bench`: latency and throughput against a running daemon, with
//! the `unshare` baseline measured in the same run (the machines are shared
//! and noisy, so ratios matter more than absolutes).

use anyhow::{Result, ensure};
use sandstone_client::Client;
use std::time::{Duration, Instant};

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

struct Stats {
    p50: f64,
    p99: f64,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    Stats {
        p50: pct(&v, 0.5),
        p99: pct(&v, 0.99),
    }
}

fn row(name: &str, s: &Stats, extra: &str) {
    println!(
        "{name:<34} p50 {:>8.2} ms   p99 {:>8.2} ms   {extra}",
        s.p50, s.p99
    );
}

fn unshare_baseline(n: usize) -> Result<Stats> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let st = std::process::Command::new("unshare")
            .args([
                "--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "true",
            ])
            .status()?;
        ensure!(st.success(), "unshare baseline failed");
        v.push(t.elapsed());
    }
    Ok(stats(v))
}

pub async fn run(c: &Client, template: &str, n: usize) -> Result<()> {
    println!("sandstone bench: {n} iterations each, template {template}");
    let base = unshare_baseline(n)?;
    row("baseline unshare (5 ns) true", &base, "");

    let mut ids = Vec::new();
    let mut creates = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        ids.push(c.claim(template, None).await?.sandbox_id);
        creates.push(t.elapsed());
    }
    let create = stats(creates);
    row(
        "create (API → init answering)",
        &create,
        &format!("{:.1}× baseline p50", create.p50 / base.p50),
    );

    let id = ids[0].clone();
    let argv = vec!["true".to_string()];
    let mut execs = Vec::new();
    for _ in 0..n * 4 {
        let t = Instant::now();
        let r = c.run(&id, &argv, None, None).await?;
        execs.push(t.elapsed());
        ensure!(r.exit_code == Some(0), "true failed");
    }
    row("exec `true` round trip", &stats(execs), "");

    let ctx = c.repl(&id, "python").await?;
    c.exec(&id, &ctx, "x = 1").await?;
    let mut repl = Vec::new();
    for _ in 0..n * 4 {
        let t = Instant::now();
        let r = c.exec(&id, &ctx, "x+1").await?;
        repl.push(t.elapsed());
        ensure!(
            r.output_raw == "2\n",
            "unexpected REPL output {:?}",
            r.output_raw
        );
    }
    row("python REPL call `x+1`", &stats(repl), "");

    let mib: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let rounds = n.max(10);
    let t = Instant::now();
    for i in 0..rounds {
        let path = format!("/workspace/bench-{i}.bin");
        c.write_file(&id, &path, mib.clone()).await?;
        ensure!(
            c.read_file(&id, &path).await? == mib,
            "file round trip differs"
        );
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{:<34} {:>8.1} MiB/s (1 MiB write+read, {rounds} rounds)",
        "file write+read",
        (2 * rounds) as f64 / secs
    );

    for id in ids {
        c.delete(&id).await?;
    }
    Ok(())
}
