//! The `sandstone` command: the daemon (`serve`), host set-up (`setup`) and
//! client commands against a running daemon.

mod agents_cmd;
mod bench;
mod bench_durable;
mod bench_store;
mod cred_cmd;
mod criu_setup;
mod exec_cmd;
mod key_cmd;
mod node_cmd;
mod policy_cmd;
mod sandbox_cmd;
mod serve_cmd;
mod snapshot_cmd;
mod terminal;
mod volume_cmd;
mod worker_cmd;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sandstone_client::Client;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "sandstone",
    version,
    about = "Self-hosted sandboxes for AI agents"
)]
struct Cli {
    /// Daemon URL for client commands.
    #[arg(
        long,
        global = true,
        env = "SANDSTONE_URL",
        default_value = "http://127.0.0.1:7700"
    )]
    url: String,
    /// Data directory (the daemon's state; the CLI reads admin.token from it).
    #[arg(
        long,
        global = true,
        env = "SANDSTONE_DATA_DIR",
        default_value = "/var/lib/sandstone"
    )]
    data_dir: PathBuf,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Prepare the host: checks, data directory, `host` and `debian` templates.
    Setup(serve_cmd::SetupArgs),
    /// Run the daemon.
    Serve(serve_cmd::ServeArgs),
    /// Create a sandbox and print its id.
    Create(sandbox_cmd::CreateArgs),
    /// Pause sandboxes (processes end, files stay).
    Pause {
        #[arg(required = true)]
        ids: Vec<String>,
        /// Keep the processes with their memory (frozen in place on this
        /// node); resume continues them.
        #[arg(long)]
        memory: bool,
    },
    /// Resume paused sandboxes.
    Resume {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Fork a sandbox: a new paused sandbox sharing its files copy-on-write.
    Fork { id: String },
    /// Replace a paused sandbox's files with a snapshot's.
    Restore { id: String, snapshot: String },
    /// Snapshots of sandboxes' files.
    Snapshot {
        #[command(subcommand)]
        cmd: snapshot_cmd::SnapshotCmd,
    },
    /// Sandbox volumes: workspaces that outlive sandboxes (mounted with
    /// `create --mount VOLUME:/path`).
    Volume {
        #[command(subcommand)]
        cmd: volume_cmd::VolumeCmd,
    },
    /// A sandbox's network policy.
    Policy {
        #[command(subcommand)]
        cmd: policy_cmd::PolicyCmd,
    },
    /// Managed Agents environments and their keys.
    Env {
        #[command(subcommand)]
        cmd: agents_cmd::EnvCmd,
    },
    /// Managed Agents agents.
    Agent {
        #[command(subcommand)]
        cmd: agents_cmd::AgentCmd,
    },
    /// Managed Agents sessions: create, send, follow.
    Session {
        #[command(subcommand)]
        cmd: agents_cmd::SessionCmd,
    },
    /// The Managed Agents environment worker: serves a `self_hosted`
    /// environment's sessions, each in its own durable sandbox.
    Worker {
        #[command(subcommand)]
        cmd: worker_cmd::WorkerCmd,
    },
    /// The nodes sharing this daemon's database.
    Node {
        #[command(subcommand)]
        cmd: node_cmd::NodeCmd,
    },
    /// API keys: made with a role and an expiry, revoked at once.
    Key {
        #[command(subcommand)]
        cmd: key_cmd::KeyCmd,
    },
    /// Teams: each key acts in one, and sees only its sandboxes,
    /// snapshots and credential sources.
    Team {
        #[command(subcommand)]
        cmd: key_cmd::TeamCmd,
    },
    /// Credential sources (values are write-only).
    Cred {
        #[command(subcommand)]
        cmd: cred_cmd::CredCmd,
    },
    /// A sandbox's egress audit records (connections, DNS answers, drops).
    Audit {
        id: String,
        /// Keep printing new records.
        #[arg(long)]
        follow: bool,
        /// Only denials.
        #[arg(long)]
        denied: bool,
    },
    /// A sandbox's output log: every context's lines, kept across pauses
    /// and restarts.
    Logs {
        id: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Only this context's lines.
        #[arg(long)]
        context: Option<String>,
        /// How many of the latest lines to start with.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
        tail: u64,
    },
    /// List sandboxes.
    Ls,
    /// Show one sandbox.
    Inspect { id: String },
    /// Run a command in a sandbox; exits with the command's exit code.
    Exec {
        id: String,
        #[arg(long)]
        cwd: Option<String>,
        #[arg(long)]
        timeout: Option<u64>,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Open an interactive shell (PTY) in a sandbox.
    Shell {
        id: String,
        /// Program to run instead of bash.
        #[arg(trailing_var_arg = true)]
        command: Vec<String>,
    },
    /// Copy a file between the host and a sandbox (`SANDBOX:PATH` names the sandbox side).
    Cp { from: String, to: String },
    /// Delete sandboxes.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Measure create, exec, REPL and file latency against the daemon.
    Bench(bench::BenchArgs),
    /// Templates.
    Template {
        #[command(subcommand)]
        cmd: TemplateCmd,
    },
}

#[derive(Subcommand)]
enum TemplateCmd {
    /// List templates.
    Ls,
    /// Import an OCI image archive as a template: a tar (plain or gzipped)
    /// of an OCI image layout, or what `docker save` writes.
    Import {
        /// The new template's id.
        name: String,
        file: std::path::PathBuf,
    },
    /// Pull an image from its registry as a template (logins: `serve
    /// --registry-auth`).
    Pull {
        /// The new template's id.
        name: String,
        /// The image: `registry/repository:tag` or `…@sha256:…`.
        image: String,
        /// Its sandboxes' memory limit when a claim sets none.
        #[arg(long, default_value = "2Gi")]
        memory: String,
    },
    /// Build a template from a Sandstonefile (FROM, RUN, COPY, ENV,
    /// WORKDIR, USER, ALLOW); unchanged steps come from the build cache.
    Build {
        /// The template's id (built again: its next version).
        name: String,
        /// The build file.
        #[arg(short = 'f', long = "file", default_value = "Sandstonefile")]
        file: std::path::PathBuf,
        /// Where COPY takes files from (default: the build file's
        /// directory).
        context: Option<std::path::PathBuf>,
    },
    /// Remove build-cache entries and image layers nothing uses.
    Prune,
    /// Capture a running or paused sandbox's files as a template.
    From {
        sandbox: String,
        /// The new template's id.
        name: String,
    },
    /// Delete a template and what only it used (refused while sandboxes,
    /// snapshots or templates use it, unless --force: then a template with
    /// versions is retired, its versions in use kept for their users).
    Rm {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    // The daemon's descriptors reach every sandbox it starts unless they
    // are close-on-exec; those it inherited are not, so they go before any
    // thread exists.
    if matches!(cli.cmd, Cmd::Serve(_))
        && let Err(e) = sandstone_sys::fd::close_from(3)
    {
        eprintln!("sandstone: close descriptors from 3: {e}");
        std::process::exit(1);
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli)));
    if let Err(e) = result {
        // The message chain, not a backtrace: this is what users read.
        eprintln!("sandstone: {e:#}");
        std::process::exit(1);
    }
}

fn client(cli: &Cli) -> Result<Client> {
    Ok(Client::new(&cli.url, &admin_token(cli)?))
}

/// `SANDSTONE_TOKEN`, else the daemon's admin token file.
fn admin_token(cli: &Cli) -> Result<String> {
    match std::env::var("SANDSTONE_TOKEN") {
        Ok(t) => Ok(t),
        Err(_) => {
            let path = cli.data_dir.join(sandstone_server::ADMIN_TOKEN_FILE);
            Ok(std::fs::read_to_string(&path)
                .with_context(|| format!("no SANDSTONE_TOKEN and cannot read {}", path.display()))?
                .trim()
                .to_string())
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Setup(args) => serve_cmd::setup_cmd(&cli.data_dir, args),
        Cmd::Serve(args) => serve_cmd::serve(&cli.data_dir, args).await,
        Cmd::Create(args) => sandbox_cmd::create(&cli, args).await,
        Cmd::Ls => sandbox_cmd::ls(&cli).await,
        Cmd::Inspect { id } => sandbox_cmd::inspect(&cli, id).await,
        Cmd::Pause { ids, memory } => sandbox_cmd::pause(&cli, ids, *memory).await,
        Cmd::Resume { ids } => sandbox_cmd::resume(&cli, ids).await,
        Cmd::Fork { id } => sandbox_cmd::fork(&cli, id).await,
        Cmd::Rm { ids } => sandbox_cmd::rm(&cli, ids).await,
        Cmd::Template {
            cmd: TemplateCmd::Ls,
        } => sandbox_cmd::templates(&cli).await,
        Cmd::Template {
            cmd: TemplateCmd::Import { name, file },
        } => sandbox_cmd::import_template(&cli, name, file).await,
        Cmd::Template {
            cmd:
                TemplateCmd::Pull {
                    name,
                    image,
                    memory,
                },
        } => sandbox_cmd::pull_template(&cli, name, image, memory).await,
        Cmd::Template {
            cmd:
                TemplateCmd::Build {
                    name,
                    file,
                    context,
                },
        } => sandbox_cmd::build_template(&cli, name, file, context.as_deref()).await,
        Cmd::Template {
            cmd: TemplateCmd::Prune,
        } => sandbox_cmd::prune_templates(&cli).await,
        Cmd::Template {
            cmd: TemplateCmd::From { sandbox, name },
        } => sandbox_cmd::capture_template(&cli, sandbox, name).await,
        Cmd::Template {
            cmd: TemplateCmd::Rm { name, force },
        } => sandbox_cmd::delete_template(&cli, name, *force).await,
        Cmd::Restore { id, snapshot } => snapshot_cmd::restore(&cli, id, snapshot).await,
        Cmd::Snapshot { cmd } => snapshot_cmd::run(&cli, cmd).await,
        Cmd::Volume { cmd } => volume_cmd::run(&cli, cmd).await,
        Cmd::Policy { cmd } => policy_cmd::run(&cli, cmd).await,
        Cmd::Audit { id, follow, denied } => policy_cmd::audit(&cli, id, *follow, *denied).await,
        Cmd::Logs {
            id,
            follow,
            context,
            tail,
        } => exec_cmd::logs(&cli, id, *follow, context.as_deref(), *tail as usize).await,
        Cmd::Cred { cmd } => cred_cmd::run(&cli, cmd).await,
        Cmd::Node { cmd } => node_cmd::run(&cli, cmd).await,
        Cmd::Key { cmd } => key_cmd::run(&cli, cmd).await,
        Cmd::Team { cmd } => key_cmd::run_team(&cli, cmd).await,
        Cmd::Env { cmd } => agents_cmd::env(&client(&cli)?, cmd).await,
        Cmd::Agent { cmd } => agents_cmd::agent(&client(&cli)?, cmd).await,
        Cmd::Session { cmd } => agents_cmd::session(&client(&cli)?, cmd).await,
        Cmd::Worker { cmd } => {
            serve_cmd::init_logging(matches!(cmd.log_format(), worker_cmd::LogFormat::Json));
            worker_cmd::run(cmd, &cli.url, || admin_token(&cli)).await
        }
        Cmd::Exec {
            id,
            cwd,
            timeout,
            command,
        } => exec_cmd::exec(&cli, id, cwd.as_deref(), *timeout, command).await,
        Cmd::Shell { id, command } => exec_cmd::shell(&cli, id, command).await,
        Cmd::Cp { from, to } => exec_cmd::copy(&client(&cli)?, from, to).await,
        Cmd::Bench(args) if args.store => bench_store::command(args, &cli.data_dir).await,
        Cmd::Bench(args) => bench::command(&client(&cli)?, args, &cli.data_dir).await,
    }
}
