//! Streaming a context to this terminal: `exec` (output as it is produced)
//! and `shell` (an interactive PTY with raw mode and resize).

use anyhow::Result;
use sandstone_client::{Attached, Client, StreamEvent};
use std::io::Write;
use std::os::fd::AsRawFd;

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
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    if unsafe { libc::ioctl(std::io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == 0
        && ws.ws_row > 0
    {
        (ws.ws_row, ws.ws_col)
    } else {
        (24, 80)
    }
}

/// Puts the terminal in raw mode until dropped.
struct RawMode(Option<libc::termios>);

impl RawMode {
    fn enter() -> RawMode {
        let fd = std::io::stdin().as_raw_fd();
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return RawMode(None); // not a terminal: pass bytes through as they are
        }
        let saved = t;
        unsafe {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd, libc::TCSANOW, &t);
        }
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, t) };
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
