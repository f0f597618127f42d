//! `sandstone-init`: PID 1 of every sandbox, and (in `spawn` mode) the
//! short-lived helper that creates it (see `sandstone_runtime::spawn`);
//! the binary only calls [`run`].
//!
//! [`proto`] is the protocol between the daemon and PID 1: a frame is two
//! big-endian u32 lengths (header, payload), a JSON header and raw payload
//! bytes, so file contents and process output travel unencoded. One
//! request is answered by one or more frames; streaming answers end with a
//! terminal frame ([`proto::Response::is_terminal`]). The daemon links this
//! library for [`proto`] alone.

mod files;
mod lease;
mod logs;
mod procs;
pub mod proto;
mod repl;
mod serve;
mod sftp;
mod supervise;
mod toolset;
mod volume;
mod watch;

use sandstone_runtime::spawn::{SandboxStart, SpawnSpec, prepare_sandbox, spawn};
use std::io::{Read, Write};

/// The binary's `main`: runs the mode its first argument names.
pub fn run() {
    match std::env::args().nth(1).as_deref() {
        Some("spawn") => spawn_mode(),
        Some("restore") => restore_mode(),
        Some("tmpfs") => tmpfs_mode(),
        Some("bind") => bind_mode(),
        // A volume's file helper (see `volume`), started by the daemon.
        Some("volume-files") => volume::helper_mode(helper_spec()),
        // A context's process (see `sftp`), not PID 1.
        Some("sftp-server") => {
            if let Err(e) = sftp::serve(std::io::stdin().lock(), std::io::stdout().lock()) {
                eprintln!("sftp-server: {e}");
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!(
                "sandstone-init is started by the Sandstone daemon (usage: sandstone-init spawn < spec.json)"
            );
            std::process::exit(2);
        }
    }
}

/// The spec a helper mode reads on its standard input, after closing
/// whatever else it was given.
fn helper_spec<T: serde::de::DeserializeOwned>() -> T {
    // The daemon's descriptors are close-on-exec, but whoever ran us may
    // have left others open: none of them may reach the sandbox.
    if let Err(e) = sandstone_sys::fd::close_from(3) {
        eprintln!("close descriptors from 3: {e}");
        std::process::exit(1);
    }
    let mut input = Vec::new();
    match std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_slice(&input).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bad helper spec: {e}");
            std::process::exit(2);
        }
    }
}

fn spawn_mode() {
    let spec: SpawnSpec = helper_spec();
    match spawn(&spec, sandbox_main) {
        Ok(pid) => println!("pid {pid}"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

/// `restore < spec.json`: brings a sandbox back from its checkpoint.
fn restore_mode() {
    let spec: sandstone_runtime::criu::RestoreSpec = helper_spec();
    match sandstone_runtime::criu::restore(&spec) {
        Ok(pid) => println!("pid {pid}"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

/// `tmpfs <pid> [memory bytes]`: re-sizes a running sandbox's tmpfs mounts.
fn tmpfs_mode() {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let pid = args.first().and_then(|p| p.parse().ok());
    let memory = args.get(1).and_then(|m| m.parse().ok());
    let Some(pid) = pid else {
        eprintln!("usage: sandstone-init tmpfs <pid> [memory bytes]");
        std::process::exit(2);
    };
    if let Err(e) = sandstone_runtime::rootfs::resize_tmpfs(pid, memory) {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

/// `bind <pid> (ro|rw <source> <target>)...`: binds host directories into
/// a running sandbox (its uploads directory, a warm sandbox's volumes).
fn bind_mode() {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let usage = || -> ! {
        eprintln!("usage: sandstone-init bind <pid> (ro|rw <source> <target>)...");
        std::process::exit(2);
    };
    let Some((pid, rest)) = args.split_first() else {
        usage()
    };
    let Ok(pid) = pid.parse() else { usage() };
    if rest.is_empty() || rest.len() % 3 != 0 {
        usage()
    }
    let mut binds = Vec::new();
    for b in rest.chunks(3) {
        let read_only = match b[0].as_str() {
            "ro" => true,
            "rw" => false,
            _ => usage(),
        };
        binds.push(sandstone_runtime::BindMount {
            source: b[1].clone().into(),
            target: b[2].clone(),
            read_only,
            idmap: true,
        });
    }
    if let Err(e) = sandstone_runtime::rootfs::bind_live(pid, &binds) {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

/// The sandbox's process defaults: its image's user is resolved and its
/// working directory made (owned by that user when it was missing, as a
/// container runtime does).
fn defaults(spec: &SpawnSpec) -> Result<procs::Defaults, String> {
    use std::os::unix::fs::MetadataExt;
    let account = match &spec.user {
        Some(u) => Some(sandstone_runtime::account::resolve(
            std::path::Path::new("/"),
            u,
        )?),
        None => None,
    };
    if let Some(dir) = &spec.workdir
        && !std::path::Path::new(dir).exists()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("make the image's WorkingDir {dir}: {e}"))?;
        if let Some(a) = &account {
            std::os::unix::fs::chown(dir, Some(a.uid), Some(a.gid))
                .map_err(|e| format!("chown the image's WorkingDir {dir}: {e}"))?;
        }
    }
    // A fresh volume's /workspace is root's: the image's user gets it.
    if let Some(a) = &account
        && a.uid != 0
        && std::fs::read_dir("/workspace").is_ok_and(|mut d| d.next().is_none())
        && std::fs::metadata("/workspace").is_ok_and(|m| m.uid() == 0)
    {
        std::os::unix::fs::chown("/workspace", Some(a.uid), Some(a.gid))
            .map_err(|e| format!("chown /workspace: {e}"))?;
    }
    Ok(procs::Defaults {
        env: spec.env.clone(),
        cwd: spec.workdir.clone(),
        account,
    })
}

fn sandbox_main(mut start: SandboxStart) -> ! {
    if let Err(e) = prepare_sandbox(&mut start) {
        let _ = start.status.write_all(e.to_string().as_bytes());
        sandstone_sys::process::exit_immediately(1);
    }
    // SIGCHLD is consumed by the reaper thread only; every thread inherits
    // the blocked mask, and spawned commands get a clean one (std's fork
    // and `sandstone_sys::process::spawn` both reset it).
    match defaults(&start.spec) {
        Ok(d) => procs::set_defaults(d),
        Err(e) => {
            let _ = start.status.write_all(e.as_bytes());
            sandstone_sys::process::exit_immediately(1);
        }
    }
    if let Some(f) = start.oom_score_adj.take()
        && let Err(e) = procs::set_oom_score_adj_file(f)
    {
        let _ = start
            .status
            .write_all(format!("read oom_score_adj: {e}").as_bytes());
        sandstone_sys::process::exit_immediately(1);
    }
    // The daemon's starter may have ignored signals (a shell's `&` ignores
    // SIGINT and SIGQUIT); workloads start with none ignored. SIGPIPE
    // stays ignored in init itself (Rust's default): a reader gone is an
    // error to handle, not a death; children get it back at its default.
    sandstone_sys::process::unignore_signals(&[libc::SIGPIPE]);
    procs::block_sigchld();
    if let (Some(file), Some(w)) = (start.lease.take(), &start.spec.lease) {
        lease::watch(file, std::time::Duration::from_millis(w.every_ms));
    }
    // Output still flows to live readers without it: a log that cannot
    // start is PID 1's diagnostic, not the sandbox's failure.
    if let (Some(dir), Some(l)) = (start.logs.take(), &start.spec.logs)
        && let Err(e) = logs::start(dir, l.max_bytes)
    {
        eprintln!("sandstone-init: the durable log did not start: {e}");
    }
    let _ = start.status.write_all(b"ok");
    drop(start.status);
    serve::serve(start.listener, serve::Scope::Sandbox);
}
