//! `sandstone bench`: latency and throughput against a running daemon, with
//! the `unshare` baseline measured in the same run (the machines are shared
//! and noisy, so ratios matter more than absolutes).

use anyhow::{Result, ensure};
use sandstone_client::Client;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(long, default_value = "host")]
    pub template: String,
    #[arg(long, short, default_value_t = 50)]
    pub iterations: usize,
    /// How many sandboxes to hold at once for the scale figures.
    #[arg(long, default_value_t = 200)]
    pub scale: usize,
    /// Measure the durable operations instead (pause, resume, snapshot,
    /// fork, warm-pool claims, paused sandboxes' memory).
    #[arg(long)]
    pub durable: bool,
    /// With --durable: how many sandboxes to hold paused.
    #[arg(long, default_value_t = 1000)]
    pub paused: usize,
    /// Measure the metadata store instead, without a daemon: event appends
    /// of busy Managed Agents sessions on a scratch SQLite database (in a
    /// temporary directory of `--data-dir`), or on `--database-url`.
    #[arg(long)]
    pub store: bool,
    /// With --store: how many busy sessions.
    #[arg(long, default_value_t = 50)]
    pub sessions: usize,
    /// With --store: a PostgreSQL database to measure instead of SQLite
    /// (its tables are the daemon's; the rows the bench adds are removed).
    #[arg(long)]
    pub database_url: Option<String>,
}

/// Runs `sandstone bench`. `data_dir`: the daemon's, when it runs here
/// (what a checkpoint of memory takes on disk is read there).
pub async fn command(c: &Client, args: &BenchArgs, data_dir: &std::path::Path) -> Result<()> {
    let n = args.iterations.max(2);
    if args.durable {
        crate::bench_durable::run(c, &args.template, n, args.paused, data_dir).await
    } else {
        run(c, &args.template, n, args.scale).await
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

pub struct Stats {
    pub p50: f64,
    pub p99: f64,
    /// The slowest, in ms.
    pub max: f64,
}

pub fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    Stats {
        p50: pct(&v, 0.5),
        p99: pct(&v, 0.99),
        max: v.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    }
}

pub fn row(name: &str, s: &Stats, extra: &str) {
    println!(
        "{name:<34} p50 {:>8.2} ms   p99 {:>8.2} ms   {extra}",
        s.p50, s.p99
    );
}

/// `n` runs of `argv` from this process, timed to its exit.
fn host_baseline(n: usize, argv: &[&str]) -> Result<Stats> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let st = std::process::Command::new(argv[0])
            .args(&argv[1..])
            .status()?;
        ensure!(st.success(), "baseline {argv:?} failed");
        v.push(t.elapsed());
    }
    Ok(stats(v))
}

pub fn meminfo_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Proportional memory of every sandbox PID 1 (`sandstone-init`), in KiB.
fn init_pss_kib() -> (u64, usize) {
    let mut total = 0;
    let mut count = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let p = e.path();
        if std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == "sandstone-init") {
            count += 1;
            total += std::fs::read_to_string(p.join("smaps_rollup"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Pss:")?
                        .trim()
                        .trim_end_matches(" kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0);
        }
    }
    (total, count)
}

/// Commands a sandbox has run before the second exec row is timed.
const LONG_LIVED: usize = 2_000;

pub async fn run(c: &Client, template: &str, n: usize, scale: usize) -> Result<()> {
    ensure!(scale > 0, "--scale must be at least 1");
    println!("sandstone bench: {n} iterations, {scale} sandboxes at scale, template {template}");
    let base = host_baseline(
        n,
        &[
            "unshare", "--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "true",
        ],
    )?;
    row("baseline unshare (5 ns) true", &base, "");
    // What an exec cannot go below: starting `true` and waiting for it.
    let spawn = host_baseline(n * 4, &["true"])?;
    row("baseline spawn true (host)", &spawn, "");

    // Cold create with one sandbox on the host: create, then delete.
    let mut creates = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let id = c.claim(template, None).await?.sandbox_id;
        creates.push(t.elapsed());
        c.delete(&id).await?;
    }
    let create1 = stats(creates);
    row(
        "create at N=1 (API → init ready)",
        &create1,
        &format!("{:.1}× baseline p50", create1.p50 / base.p50),
    );

    let avail_before = meminfo_kib("MemAvailable:");
    let mut ids = Vec::new();
    let mut creates = Vec::new();
    for _ in 0..scale {
        let t = Instant::now();
        ids.push(c.claim(template, None).await?.sandbox_id);
        creates.push(t.elapsed());
    }
    // The last tenth alone: what a create costs once N sandboxes exist,
    // not averaged with the cheap ones at the start.
    let last = stats(creates[creates.len() - creates.len().div_ceil(10)..].to_vec());
    let at_scale = stats(creates);
    row(
        &format!("create up to N={scale}"),
        &at_scale,
        &format!("p99 = {:.2}× create p99 at N=1", at_scale.p99 / create1.p99),
    );
    row(
        &format!("create, last tenth to N={scale}"),
        &last,
        &format!("p99 = {:.2}× create p99 at N=1", last.p99 / create1.p99),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = avail_before.saturating_sub(meminfo_kib("MemAvailable:"));
    let (pss, inits) = init_pss_kib();
    println!(
        "{:<34} {:>8.2} MiB host memory per idle sandbox (MemAvailable drop / {scale}); init PSS {:.2} MiB each ({inits} inits)",
        "memory at scale",
        used as f64 / 1024.0 / scale.max(1) as f64,
        pss as f64 / 1024.0 / inits.max(1) as f64,
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
    let exec = stats(execs);
    row(
        "exec `true` round trip",
        &exec,
        &format!("{:.2} ms over the host spawn p50", exec.p50 - spawn.p50),
    );
    // What a sandbox keeps of every command it ran must not slow the next.
    let mut ran = n * 4;
    while ran < LONG_LIVED {
        c.run(&id, &argv, None, None).await?;
        ran += 1;
    }
    let mut later = Vec::new();
    for _ in 0..n * 4 {
        let t = Instant::now();
        c.run(&id, &argv, None, None).await?;
        later.push(t.elapsed());
    }
    let later = stats(later);
    row(
        &format!("exec `true` after {LONG_LIVED} commands"),
        &later,
        &format!("{:.2}× the first exec p50", later.p50 / exec.p50),
    );

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
