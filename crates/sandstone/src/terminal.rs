//! Streaming a context to this terminal: `exec` (output as it is produced)
//! and `shell` (an interactive PTY with raw mode and resize).

use anyhow::Result;
use sandstone_client::{Attached, Client, StreamEvent};
use sandstone_sys::term::{self, TermSettings};
use std::io::Write;
use std::os::fd::AsFd;

/// Prints output as it arrives; returns the exit code.
pub async fn stream(att: &mut Attached) -> Result<i32> {
    while let Some(ev) = att.next().await {
        match ev {
            StreamEvent::Output { source, data } => {
                if source == "stderr" {
                    std::io::stderr().write_all(data.as_bytes())?;
                } else {
                    let mut out = std::io::stdout();
                    out.write_all(data.as_bytes())?;
                    out.flush()?;
                }
            }
            StreamEvent::Done { exit_code, state } => {
                if state == "timed_out" {
                    eprintln!("sandstone: the command timed out");
                }
                return Ok(exit_code.unwrap_or(1));
            }
            StreamEvent::Error(e) => anyhow::bail!("{e}"),
            StreamEvent::Truncated { dropped_bytes } => truncated_note(dropped_bytes),
        }
    }
    anyhow::bail!("the stream ended before the command finished")
}

/// Output was dropped before this attach could see it: say so where a
/// reader of stdout cannot miss it and the output itself stays intact.
fn truncated_note(dropped_bytes: u64) {
    eprintln!(
        "sandstone: {dropped_bytes} bytes of earlier output were dropped (nobody read them in time); what follows is the rest"
    );
}

fn window_size() -> (u16, u16) {
    match sandstone_sys::term::window_size(std::io::stdout().as_fd()) {
        Ok((rows, cols)) if rows > 0 => (rows, cols),
        _ => (24, 80),
    }
}

/// Puts the terminal in raw mode until dropped.
struct RawMode(Option<TermSettings>);

impl RawMode {
    fn enter() -> RawMode {
        let stdin = std::io::stdin();
        // Not a terminal: pass bytes through as they are.
        let Ok(saved) = term::settings(stdin.as_fd()) else {
            return RawMode(None);
        };
        // Best effort: a terminal that refuses raw mode still works, cooked.
        let _ = term::apply(stdin.as_fd(), &saved.raw());
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = term::apply(std::io::stdin().as_fd(), t);
        }
    }
}

pub async fn interactive(c: &Client, id: &str, argv: &[String]) -> Result<i32> {
    use tokio::io::AsyncReadExt;
    let (rows, cols) = window_size();
    let ctx = c
        .start(
            id,
            argv,
            None,
            Some(sandstone_api::PtySize { rows, cols }),
            None,
        )
        .await?;
    let mut att = c.attach(id, &ctx).await?;
    let _raw = RawMode::enter();
    let mut stdin = tokio::io::stdin();
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut buf = [0u8; 4096];
    let mut stdin_open = true;
    loop {
        tokio::select! {
            ev = att.next() => match ev {
                Some(StreamEvent::Output { data, .. }) => {
                    let mut out = std::io::stdout();
                    out.write_all(data.as_bytes())?;
                    out.flush()?;
                }
                Some(StreamEvent::Done { exit_code, .. }) => return Ok(exit_code.unwrap_or(1)),
                Some(StreamEvent::Error(e)) => anyhow::bail!("{e}"),
                Some(StreamEvent::Truncated { dropped_bytes }) => truncated_note(dropped_bytes),
                None => anyhow::bail!("the connection to the sandbox closed"),
            },
            n = stdin.read(&mut buf), if stdin_open => match n? {
                0 => stdin_open = false,
                n => att.input(&String::from_utf8_lossy(&buf[..n])).await?,
            },
            _ = winch.recv() => {
                let (r, c) = window_size();
                att.resize(r, c).await?;
            }
        }
    }
}
