//! Wake-ups between the control planes of one database. A change another
//! node must act on at once — work queued (its pollers), an event appended
//! (its streams, and its turn driver when the event is input), a session's
//! document or a registry changed (its caches) — is published after it is
//! committed: on PostgreSQL with `NOTIFY` (see `sandstone_db::agents`;
//! document writes notify from a trigger, in their transaction), on
//! SQLite nowhere (one node). The node that made the change acts on it
//! itself where it makes it; [`Notifier::spawn_listener`] delivers the other
//! nodes' signals to [`crate::Agents::apply`], so there is one path for
//! them whatever the backend.

use futures_util::StreamExt;
use sandstone_db::agents::AgentsStore;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// What another node changed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Signal {
    /// Work was queued in this environment.
    Work { environment: String },
    /// An event was appended at `seq`; `input` when it can start a turn
    /// (a client's or worker's event).
    Event {
        session: String,
        seq: i64,
        input: bool,
    },
    /// A document was written or deleted (the `ma_docs` trigger sends
    /// this, in the writing transaction, from every node, this one too).
    Doc { kind: String, id: String },
    /// The listening connection was lost and re-made: signals may have
    /// been missed, so everything cached is looked at again.
    Resync,
}

impl Signal {
    fn encode(&self, origin: &str) -> String {
        match self {
            Signal::Work { environment } => format!("{origin} w {environment}"),
            Signal::Event {
                session,
                seq,
                input,
            } => format!("{origin} e {session} {seq} {}", u8::from(*input)),
            Signal::Doc { kind, id } => format!("{origin} d {kind} {id}"),
            Signal::Resync => format!("{origin} x"),
        }
    }

    /// The signal and the node it came from; `None` for a payload that is
    /// not one of ours.
    fn decode(payload: &str) -> Option<(&str, Signal)> {
        let mut words = payload.split(' ');
        let origin = words.next()?;
        let kind = words.next()?;
        let mut arg = || words.next().map(str::to_string);
        let signal = match kind {
            "w" => Signal::Work {
                environment: arg()?,
            },
            "e" => Signal::Event {
                session: arg()?,
                seq: arg()?.parse().ok()?,
                input: arg()? == "1",
            },
            "d" => Signal::Doc {
                kind: arg()?,
                id: arg()?,
            },
            "x" => Signal::Resync,
            _ => return None,
        };
        Some((origin, signal))
    }
}

pub(crate) struct Notifier {
    /// This node's name ([`crate::Config::node`]) in payloads: its own
    /// signals come back to it and are skipped.
    origin: String,
    store: Arc<dyn AgentsStore>,
}

impl Notifier {
    pub(crate) fn new(store: Arc<dyn AgentsStore>, node: &str) -> Notifier {
        Notifier {
            origin: node.to_string(),
            store,
        }
    }

    /// The name this plane claims session turns under.
    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    /// Tells the other nodes (call it after the change is committed). A
    /// failure is logged, not returned: the change itself was made, and
    /// the others see it at their next look (a poll's deadline, a resync).
    pub(crate) async fn publish(&self, signal: Signal) {
        if let Err(e) = self.store.notify(&signal.encode(&self.origin)).await {
            tracing::warn!(error = %e, ?signal, "could not notify the other nodes");
        }
    }

    /// Listens for the other nodes' signals (PostgreSQL) and hands each to
    /// `agents`; reconnects after an error, with a resync.
    pub(crate) fn spawn_listener(self: &Arc<Self>, agents: Weak<crate::Agents>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let mut stream = match me.store.listen().await {
                    Ok(Some(s)) => s,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for the other nodes; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                while let Some(next) = stream.next().await {
                    let Some(agents) = agents.upgrade() else {
                        return;
                    };
                    let signal = match next {
                        Ok(Some(payload)) => match Signal::decode(&payload) {
                            Some((origin, _)) if origin == me.origin => continue,
                            Some((_, s)) => s,
                            None => continue,
                        },
                        Ok(None) => Signal::Resync,
                        Err(e) => {
                            tracing::warn!(error = %e, "listening for the other nodes");
                            break;
                        }
                    };
                    agents.apply(signal).await;
                }
                if let Some(agents) = agents.upgrade() {
                    agents.apply(Signal::Resync).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_round_trip_and_foreign_payloads_are_ignored() {
        let all = [
            Signal::Work {
                environment: "env_1".into(),
            },
            Signal::Event {
                session: "sesn_1".into(),
                seq: 42,
                input: true,
            },
            Signal::Doc {
                kind: "session".into(),
                id: "sesn_1".into(),
            },
            Signal::Resync,
        ];
        for s in all {
            assert_eq!(Signal::decode(&s.encode("plane_a")), Some(("plane_a", s)));
        }
        assert_eq!(Signal::decode("plane_a q"), None);
        assert_eq!(Signal::decode("plane_a e sesn_1 notanumber 1"), None);
    }
}
