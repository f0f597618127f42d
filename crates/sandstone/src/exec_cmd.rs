//! Running things in a sandbox and moving files: `exec`, `shell`, `cp`.

use crate::{Cli, client, print_json, terminal};
use anyhow::{Context, Result, bail};
use sandstone_client::Client;

/// Runs `command`; exits with its exit code.
pub async fn exec(
    cli: &Cli,
    id: &str,
    cwd: Option<&str>,
    timeout: Option<u64>,
    command: &[String],
) -> Result<()> {
    let c = client(cli)?;
    let code = if cli.json {
        let r = c.run(id, command, cwd, timeout).await?;
        print_json(&r)?;
        r.exit_code.unwrap_or(1)
    } else {
        let ctx = c.start(id, command, cwd, None, timeout).await?;
        terminal::stream(&mut c.attach(id, &ctx).await?).await?
    };
    std::process::exit(code);
}

/// An interactive PTY session; exits with its exit code.
pub async fn shell(cli: &Cli, id: &str, command: &[String]) -> Result<()> {
    let c = client(cli)?;
    let argv = if command.is_empty() {
        vec!["bash".to_string(), "-i".to_string()]
    } else {
        command.to_vec()
    };
    let code = terminal::interactive(&c, id, &argv).await?;
    std::process::exit(code);
}

/// Splits `SANDBOX:PATH`; a host path has no colon before its first slash.
pub fn remote(spec: &str) -> Option<(&str, &str)> {
    let (id, path) = spec.split_once(':')?;
    (!id.contains('/') && !id.is_empty()).then_some((id, path))
}

/// Copies one file between the host and a sandbox.
pub async fn copy(c: &Client, from: &str, to: &str) -> Result<()> {
    match (remote(from), remote(to)) {
        (Some((id, path)), None) => {
            let bytes = c.read_file(id, path).await?;
            std::fs::write(to, bytes).with_context(|| format!("write {to}"))?;
        }
        (None, Some((id, path))) => {
            let bytes = std::fs::read(from).with_context(|| format!("read {from}"))?;
            c.write_file(id, path, bytes).await?;
        }
        _ => bail!("exactly one side must be SANDBOX:PATH"),
    }
    Ok(())
}

/// `sandstone logs`: the latest `tail` lines, then (with `follow`) new
/// ones as they come. Lines of several contexts carry their context's id.
pub async fn logs(
    cli: &Cli,
    id: &str,
    follow: bool,
    context: Option<&str>,
    tail: usize,
) -> Result<()> {
    let c = client(cli)?;
    let mut page = c.logs(id, None, tail, context).await?;
    loop {
        for entry in &page.logs {
            if cli.json {
                println!("{}", serde_json::to_string(entry)?);
            } else if context.is_some() {
                println!("{}", entry.message);
            } else {
                println!("{} | {}", entry.context_id, entry.message);
            }
        }
        if !follow {
            return Ok(());
        }
        if page.logs.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        page = c.logs(id, Some(&page.next_cursor), 1000, context).await?;
    }
}
