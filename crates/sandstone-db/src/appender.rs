//! Session events are appended in batches by one task per store. The
//! events that arrive together go in one statement and one commit: a commit
//! (a sync of SQLite's file or of PostgreSQL's WAL) costs more than the rows
//! it holds, and fifty busy sessions committing one event each queue behind
//! each other's syncs. Each caller is answered after the commit that holds
//! its own event, so nothing acknowledged is lost. How a batch is written
//! is each backend's ([`EventWriter`]).

use crate::{Error, Result};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

/// Most events one statement appends.
const APPEND_BATCH: usize = 256;

/// How a backend appends and deletes a session's events.
pub(crate) trait EventWriter: Send + Sync + 'static {
    /// Most bytes of events (documents and session ids) one batch holds;
    /// a larger event goes alone.
    const BATCH_BYTES: usize;
    /// Batches written at once (each on a connection of its own); 1 keeps
    /// them in order.
    const IN_FLIGHT: usize;

    /// Appends `events` (session, document) in the order given, in one
    /// commit; their numbers, in the same order.
    fn append(&self, events: &[(&str, &str)]) -> impl Future<Output = Result<Vec<i64>>> + Send;

    /// Deletes a session's events; its numbers start again at 0.
    fn delete(&self, session_id: &str) -> impl Future<Output = Result<()>> + Send;
}

/// What the appender does, in the order asked.
enum EventOp {
    Append {
        session_id: String,
        doc: String,
        done: oneshot::Sender<Result<i64>>,
    },
    Delete {
        session_id: String,
        done: oneshot::Sender<Result<()>>,
    },
}

/// A store's way to its appender task, which stops when this is dropped.
pub(crate) struct Appender {
    queue: mpsc::Sender<EventOp>,
    task: tokio::task::AbortHandle,
}

impl Drop for Appender {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Appender {
    /// Starts the task (on the current runtime) that writes with `writer`.
    pub(crate) fn spawn(writer: impl EventWriter) -> Appender {
        let (queue, ops) = mpsc::channel(APPEND_BATCH * 4);
        let task = tokio::spawn(run(writer, ops)).abort_handle();
        Appender { queue, task }
    }

    /// Appends an event; its number, once committed.
    pub(crate) async fn append(&self, session_id: String, doc: String) -> Result<i64> {
        self.ask(|done| EventOp::Append {
            session_id,
            doc,
            done,
        })
        .await
    }

    /// Deletes a session's events, in order with the appends asked before.
    pub(crate) async fn delete(&self, session_id: String) -> Result<()> {
        self.ask(|done| EventOp::Delete { session_id, done }).await
    }

    async fn ask<T>(&self, op: impl FnOnce(oneshot::Sender<Result<T>>) -> EventOp) -> Result<T> {
        let (done, answer) = oneshot::channel();
        let closed = || Error::Closed("the event appender");
        self.queue.send(op(done)).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

type Pending = Vec<(String, String, oneshot::Sender<Result<i64>>)>;

/// Takes what waits (up to [`APPEND_BATCH`]) and does it in order: the
/// appends before a deletion in batches of at most
/// [`EventWriter::BATCH_BYTES`], up to [`EventWriter::IN_FLIGHT`] of them
/// at once, then the deletion, once they are all done.
async fn run<W: EventWriter>(writer: W, mut queue: mpsc::Receiver<EventOp>) {
    let mut in_flight = InFlight::new();
    let mut ops = Vec::with_capacity(APPEND_BATCH);
    let mut appends = Pending::new();
    let mut bytes = 0;
    loop {
        tokio::select! {
            n = queue.recv_many(&mut ops, APPEND_BATCH), if in_flight.len() < W::IN_FLIGHT => {
                if n == 0 {
                    break;
                }
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
        }
        for op in ops.drain(..) {
            match op {
                EventOp::Append {
                    session_id,
                    doc,
                    done,
                } => {
                    let size = session_id.len() + doc.len();
                    if bytes + size > W::BATCH_BYTES {
                        launch(&mut in_flight, &writer, &mut appends).await;
                        bytes = 0;
                    }
                    bytes += size;
                    appends.push((session_id, doc, done));
                }
                EventOp::Delete { session_id, done } => {
                    launch(&mut in_flight, &writer, &mut appends).await;
                    while in_flight.next().await.is_some() {}
                    bytes = 0;
                    let _ = done.send(writer.delete(&session_id).await);
                }
            }
        }
        launch(&mut in_flight, &writer, &mut appends).await;
        bytes = 0;
    }
    while in_flight.next().await.is_some() {}
}

type InFlight<'w> = FuturesUnordered<std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'w>>>;

/// Starts writing `appends` (if any) once fewer than
/// [`EventWriter::IN_FLIGHT`] batches are being written.
async fn launch<'w, W: EventWriter>(
    in_flight: &mut InFlight<'w>,
    writer: &'w W,
    appends: &mut Pending,
) {
    if appends.is_empty() {
        return;
    }
    if in_flight.len() >= W::IN_FLIGHT {
        in_flight.next().await;
    }
    in_flight.push(Box::pin(append_batch(writer, std::mem::take(appends))));
}

/// Appends `batch` and answers each; a batch that fails is appended again
/// event by event, so one bad event fails alone.
async fn append_batch(writer: &impl EventWriter, batch: Pending) {
    let events: Vec<(&str, &str)> = batch
        .iter()
        .map(|(s, d, _)| (s.as_str(), d.as_str()))
        .collect();
    let all = writer.append(&events).await;
    drop(events);
    match all {
        Ok(seqs) => {
            for ((_, _, done), seq) in batch.into_iter().zip(seqs) {
                let _ = done.send(Ok(seq));
            }
        }
        Err(_) => {
            for (session, doc, done) in batch {
                let one = writer.append(&[(&session, &doc)]).await;
                let _ = done.send(one.map(|seqs| seqs[0]));
            }
        }
    }
}
