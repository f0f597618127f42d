//! What a lifecycle operation can fail with. Each case says what went
//! wrong in the sandbox's terms; `routes/error.rs` alone decides the HTTP
//! status and code a caller sees for it.

/// A failed lifecycle operation; the text is the message the caller reads.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of the request is wrong; the text names it.
    #[error("{0}")]
    Invalid(String),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// The sandbox's state does not allow the operation.
    #[error("{0}")]
    Conflict(String),
    /// What was asked for existed once and is no longer kept (a cursor
    /// older than the retained history).
    #[error("{0}")]
    Gone(String),
    /// Every uid range (or sandbox subnet) is taken.
    #[error("no free sandbox slot")]
    NoSlot,
    /// The storage pool is down to its reserve.
    #[error("{0}")]
    NoSpace(String),
    /// A service the operation needs (the object store) failed; the text
    /// says which and why. Nothing was changed on its account.
    #[error("{0}")]
    Unavailable(String),
    #[error("sandbox init unreachable: {0}")]
    InitUnreachable(std::io::Error),
    #[error(transparent)]
    Db(#[from] sandstone_db::Error),
    /// A host-side step failed (storage, cgroup, launch).
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn not_found(what: &'static str, id: &str) -> Self {
        Error::NotFound {
            what,
            id: id.to_string(),
        }
    }

    /// A failed host-side step, with its error's text.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal(e.to_string())
    }
}
