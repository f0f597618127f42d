//! The daemon-facing server: one thread per connection, one request at a time.

use crate::procs::{self, Event, FirstReader, Proc, SpawnRequest};
use crate::proto::{ErrorCode, ExitInfo, ProcKind, Request, Response, read_frame, write_frame};
use crate::{files, repl, supervise, toolset, watch};
use std::io::{BufWriter, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

/// What a server answers: every request (PID 1 of a sandbox), or a
/// volume's file requests alone (`volume-files`, see [`crate::volume`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Sandbox,
    Volume,
}

pub fn serve(listener: UnixListener, scope: Scope) -> ! {
    for conn in listener.incoming() {
        let Ok(c) = conn else { continue };
        // At the pids limit no thread can be made; serve the connection on
        // this thread rather than dying, so the daemon can still clean up.
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(c)));
        let theirs = slot.clone();
        let spawned = std::thread::Builder::new().spawn(move || {
            if let Some(c) = theirs.lock().expect("lock poisoned").take() {
                handle(c, scope)
            }
        });
        if spawned.is_err()
            && let Some(c) = slot.lock().expect("lock poisoned").take()
        {
            handle(c, scope);
        }
    }
    unreachable!("listener never ends")
}

pub(crate) type Out = BufWriter<UnixStream>;

pub(crate) fn send(out: &mut Out, r: &Response, payload: &[u8]) -> std::io::Result<()> {
    write_frame(out, r, payload)?;
    if r.is_terminal() {
        out.flush()?;
    }
    Ok(())
}

/// The descriptors of every open connection, by connection: what
/// [`quiesce`] ends. A connection leaves it (in [`Registered`]'s drop)
/// before its descriptors are closed, so a number in it is always still
/// the connection's.
static CONNECTIONS: std::sync::Mutex<Vec<(u64, [RawFd; 2])>> = std::sync::Mutex::new(Vec::new());

struct Registered(u64);

impl Registered {
    fn new(fds: [RawFd; 2]) -> Registered {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        CONNECTIONS.lock().expect("lock poisoned").push((id, fds));
        Registered(id)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        CONNECTIONS
            .lock()
            .expect("lock poisoned")
            .retain(|(id, _)| *id != self.0);
    }
}

/// Ends every connection but `keep` (see `Request::Quiesce`): each is shut
/// down (so the daemon's end sees it close, and a thread blocked on it
/// wakes), then each of its descriptors replaced, under its number, by a
/// socket whose peer is closed, so the thread serving it gets an end of
/// input or EPIPE at its next read or write, and returns.
fn quiesce(keep: u64) -> std::io::Result<()> {
    let (dead, peer) = UnixStream::pair()?;
    drop(peer);
    let conns = CONNECTIONS.lock().expect("lock poisoned");
    for (_, fds) in conns.iter().filter(|(id, _)| *id != keep) {
        // SAFETY: a descriptor in the registry is open while the registry
        // is locked (a connection leaves it before closing it).
        let conn = unsafe { std::os::fd::BorrowedFd::borrow_raw(fds[0]) };
        sandstone_sys::net::shutdown(conn, std::net::Shutdown::Both)?;
        for fd in fds {
            sandstone_sys::fd::dup_to(dead.as_raw_fd(), *fd)?;
        }
    }
    sandstone_sys::security::set_dumpable(true)
}

fn handle(conn: UnixStream, scope: Scope) {
    let mut reader = match conn.try_clone() {
        Ok(r) => r,
        Err(_) => return,
    };
    let mut out = BufWriter::with_capacity(256 * 1024, conn);
    // Declared last, so dropped first: out of the registry before closed.
    let me = Registered::new([reader.as_raw_fd(), out.get_ref().as_raw_fd()]);
    loop {
        let (req, payload): (Request, Vec<u8>) = match read_frame(&mut reader) {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                let _ = send(
                    &mut out,
                    &Response::error(ErrorCode::InvalidArgument, e.to_string()),
                    &[],
                );
                return;
            }
        };
        if scope == Scope::Volume {
            if crate::volume::dispatch(req, payload, &mut out).is_err() {
                return;
            }
            continue;
        }
        if let Request::Quiesce | Request::CheckpointDone = req {
            let done = match req {
                Request::Quiesce => quiesce(me.0),
                _ => sandstone_sys::security::set_dumpable(false),
            };
            let resp = match done {
                Ok(()) => Response::Ok,
                Err(e) => io_error(&e),
            };
            if send(&mut out, &resp, &[]).is_err() {
                return;
            }
            continue;
        }
        if dispatch(req, payload, &mut out).is_err() {
            return;
        }
    }
}

pub fn io_error(e: &std::io::Error) -> Response {
    Response::error(e.kind().into(), e.to_string())
}

fn not_found(id: &str) -> Response {
    Response::error(ErrorCode::NotFound, format!("context {id} not found"))
}

fn with_proc(id: &str, f: impl FnOnce(&Proc) -> Response) -> Response {
    match procs::get(id) {
        Some(p) => f(&p),
        None => not_found(id),
    }
}

fn dispatch(req: Request, payload: Vec<u8>, out: &mut Out) -> std::io::Result<()> {
    let resp = match req {
        // Answered by `handle`, which knows the connection to keep.
        Request::Quiesce | Request::CheckpointDone => {
            Response::error(ErrorCode::InvalidArgument, "not here")
        }
        Request::Ping => Response::Pong {
            version: env!("CARGO_PKG_VERSION").into(),
        },
        Request::Spawn {
            id,
            kind,
            cwd,
            env,
            pty,
            attach,
            timeout_ms,
            hold_ms,
            restart,
        } => match restart {
            Some(_) if attach || timeout_ms.is_some() => Response::error(
                ErrorCode::InvalidArgument,
                "a supervised context is neither attached nor timed",
            ),
            Some(spec) => {
                let command = supervise::Command {
                    kind,
                    cwd,
                    env,
                    pty,
                };
                match supervise::start(&id, command, spec) {
                    Ok(()) => with_proc(&id, |p| Response::Proc { info: p.info() }),
                    Err(e) => Response::error(e.code(), e.to_string()),
                }
            }
            None => match procs::spawn(SpawnRequest {
                id,
                kind,
                cwd,
                env,
                pty,
                reader: if attach {
                    FirstReader::Attached
                } else {
                    FirstReader::later(hold_ms)
                },
            }) {
                Ok((proc, rx)) if attach => {
                    return stream_until_exit(&proc, Vec::new(), rx, timeout_ms, out);
                }
                Ok((proc, rx)) => {
                    if let Some(ms) = timeout_ms {
                        kill_at_deadline(proc.clone(), rx, ms);
                    }
                    Response::Proc { info: proc.info() }
                }
                Err(e) => Response::error(e.code(), e.to_string()),
            },
        },
        Request::Exec {
            id,
            code,
            timeout_ms,
        } => match procs::get(&id) {
            Some(p) => return exec(&p, &code, timeout_ms, out),
            None => not_found(&id),
        },
        Request::Attach { id } => match procs::get(&id) {
            Some(p) => {
                let (replay, rx) = p.subscribe(true);
                return stream_until_exit(&p, replay, rx, None, out);
            }
            None => not_found(&id),
        },
        Request::Input { id } => with_proc(&id, |p| match p.write_input(&payload) {
            Ok(()) => Response::Ok,
            Err(e) => io_error(&e),
        }),
        Request::CloseStdin { id } => with_proc(&id, |p| {
            p.close_input();
            Response::Ok
        }),
        Request::Signal { id, signal } => with_proc(&id, |p| match p.signal(signal) {
            Ok(()) => Response::Ok,
            Err(e) => io_error(&e),
        }),
        Request::Resize { id, size } => {
            let resized = with_proc(&id, |p| {
                if p.resize(size) {
                    Response::Ok
                } else {
                    Response::error(ErrorCode::InvalidArgument, "context has no PTY")
                }
            });
            // Outside the process table's lock, as the supervisor takes
            // its own first.
            if resized == Response::Ok {
                supervise::resized(&id, size);
            }
            resized
        }
        Request::Restart { id } => restart(&id),
        Request::Remove { id } => {
            // First, or the supervisor would start it again.
            supervise::stop(&id);
            match procs::remove(&id) {
                Some(_) => Response::Ok,
                None => not_found(&id),
            }
        }
        Request::Get { id } => with_proc(&id, |p| Response::Proc { info: p.info() }),
        Request::List => Response::Procs {
            procs: procs::list().iter().map(|p| p.info()).collect(),
        },
        Request::Watch { path, recursive } => return watch::run(&path, recursive, out),
        Request::ReadFile { path } => {
            return files::stream_file(std::path::Path::new(&path), |r, bytes| send(out, r, bytes));
        }
        // Runs on this connection's thread: a long walk delays no one else.
        Request::Tool {
            name,
            input,
            workdir,
            allowed_roots,
            read_only_roots,
        } => toolset::call(&name, &input, &workdir, &allowed_roots, &read_only_roots),
        other => {
            return {
                let (r, body) = files::handle(other, &payload);
                send(out, &r, &body)
            };
        }
    };
    let resp = (resp, Vec::new());
    send(out, &resp.0, &resp.1)
}

/// Enforces a detached process's timeout from a helper thread.
fn kill_at_deadline(proc: std::sync::Arc<Proc>, rx: Receiver<Event>, ms: u64) {
    let _ = std::thread::Builder::new().spawn(move || {
        let deadline = Instant::now() + Duration::from_millis(ms);
        loop {
            match recv(&rx, Some(deadline)) {
                Ok(Event::Exit(_)) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => return proc.time_out(),
            }
        }
    });
}

fn restart(id: &str) -> Response {
    match supervise::replace(id) {
        Ok(true) => return with_proc(id, |p| Response::Proc { info: p.info() }),
        Ok(false) => {}
        Err(e) => return Response::error(e.code(), e.to_string()),
    }
    let Some(old) = procs::remove(id) else {
        return not_found(id);
    };
    // Wait (bounded) for the old process to go before reusing its id.
    let (before, rx) = old.subscribe(false);
    if before.is_empty() {
        let _ = rx.recv_timeout(Duration::from_secs(5));
    }
    match procs::spawn(SpawnRequest {
        id: old.id.clone(),
        kind: old.kind.clone(),
        cwd: old.cwd.clone(),
        env: old.env.clone(),
        pty: old.pty_size,
        reader: FirstReader::later(None),
    }) {
        Ok((p, _)) => Response::Proc { info: p.info() },
        Err(e) => Response::error(e.code(), e.to_string()),
    }
}

/// Forwards `replay`, then live output until the process exits; kills it
/// at the deadline.
fn stream_until_exit(
    proc: &Proc,
    replay: Vec<Event>,
    rx: Receiver<Event>,
    timeout_ms: Option<u64>,
    out: &mut Out,
) -> std::io::Result<()> {
    let deadline = timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut replay = replay.into_iter();
    loop {
        // A burst of output goes out in one write; before waiting for
        // more, what is buffered is flushed, so a long-running process's
        // output reaches its watcher as it is made, not at exit.
        let next = match replay.next() {
            Some(ev) => Ok(ev),
            None => match rx.try_recv() {
                Ok(ev) => Ok(ev),
                Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {
                    out.flush()?;
                    recv(&rx, deadline)
                }
            },
        };
        match next {
            Ok(Event::Output(stream, bytes)) => send(out, &Response::Output { stream }, &bytes)?,
            Ok(Event::Truncated(dropped_bytes)) => {
                send(out, &Response::Truncated { dropped_bytes }, &[])?
            }
            Ok(Event::ExecDone(_)) => {}
            Ok(Event::Exit(info)) => {
                let proc = Some(Box::new(proc.info()));
                return send(out, &Response::Exit { info, proc }, &[]);
            }
            Err(RecvTimeoutError::Timeout) => proc.time_out(),
            Err(RecvTimeoutError::Disconnected) => {
                let info = ExitInfo {
                    exit_code: None,
                    signal: None,
                    timed_out: false,
                };
                let proc = Some(Box::new(proc.info()));
                return send(out, &Response::Exit { info, proc }, &[]);
            }
        }
    }
}

fn recv(rx: &Receiver<Event>, deadline: Option<Instant>) -> Result<Event, RecvTimeoutError> {
    match deadline {
        Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
    }
}

/// Runs code in a REPL context. On timeout the interpreter is killed (its
/// state is gone; the caller restarts the context).
fn exec(proc: &Proc, code: &str, timeout_ms: Option<u64>, out: &mut Out) -> std::io::Result<()> {
    if !matches!(proc.kind, ProcKind::Repl { .. }) {
        let r = Response::error(
            ErrorCode::InvalidArgument,
            "exec needs a REPL context; use input for cmd contexts",
        );
        return send(out, &r, &[]);
    }
    if code.contains('\0') {
        return send(
            out,
            &Response::error(ErrorCode::InvalidArgument, "code contains a NUL byte"),
            &[],
        );
    }
    let _turn = proc.exec_lock.lock().expect("lock poisoned");
    let (_, rx) = proc.subscribe(false);
    let written = match proc.code.lock().expect("lock poisoned").as_mut() {
        Some(w) => w.write_all(&repl::frame(proc, code)),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "context has exited",
        )),
    };
    if let Err(e) = written {
        return send(out, &io_error(&e), &[]);
    }
    let deadline = timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut timed_out = false;
    // The caller may go away mid-execution; the turn is still held until
    // the code ends, or its end would be read as the next execution's.
    let mut gone: Option<std::io::Error> = None;
    let mut reply = |out: &mut Out, r: &Response, payload: &[u8]| match &gone {
        Some(_) => {}
        None => gone = send(out, r, payload).err(),
    };
    loop {
        match recv(&rx, deadline) {
            Ok(Event::Output(stream, bytes)) => reply(out, &Response::Output { stream }, &bytes),
            // A live subscriber misses nothing.
            Ok(Event::Truncated(_)) => {}
            Ok(Event::ExecDone(exit_code)) => {
                reply(
                    out,
                    &Response::ExecDone {
                        exit_code,
                        timed_out,
                    },
                    &[],
                );
                return gone.map_or(Ok(()), Err);
            }
            Ok(Event::Exit(info)) => {
                let r = Response::ExecDone {
                    exit_code: info.exit_code,
                    timed_out: timed_out || info.timed_out,
                };
                reply(out, &r, &[]);
                return gone.map_or(Ok(()), Err);
            }
            Err(RecvTimeoutError::Timeout) => {
                timed_out = true;
                proc.time_out();
            }
            Err(RecvTimeoutError::Disconnected) => {
                let r = Response::ExecDone {
                    exit_code: None,
                    timed_out,
                };
                return send(out, &r, &[]);
            }
        }
    }
}
