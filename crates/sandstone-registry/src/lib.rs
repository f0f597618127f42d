//! Pulling images from a registry by the OCI distribution protocol into an
//! OCI image layout that `sandstone-oci` reads: the manifest for this
//! machine's architecture (through an index or a Docker manifest list),
//! its config and the layers the host does not have yet, each blob checked
//! against its digest, partial downloads resumed, and registry logins done
//! as registries do them (an anonymous try, then the `WWW-Authenticate`
//! challenge: a bearer token from the realm, or basic credentials).

mod auth;
mod pull;
mod reference;
pub mod store;

pub use auth::Auths;
pub use pull::{Pulled, Puller};
pub use reference::Reference;
pub use store::Store;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {reference:?}: {reason}")]
    Reference {
        reference: String,
        reason: &'static str,
    },
    #[error("registry {registry}: {source}")]
    Http {
        registry: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("registry {registry} refused the credentials for {repository}: {reason}")]
    Unauthorized {
        registry: String,
        repository: String,
        reason: String,
    },
    #[error("{what} is not in registry {registry}")]
    NotFound { registry: String, what: String },
    #[error("registry {registry} answered {status} for {what}")]
    Status {
        registry: String,
        what: String,
        status: u16,
    },
    /// More bytes than the manifest states (or than a small answer may
    /// hold): cut off, nothing kept.
    #[error("registry {registry} sent more than the {size} bytes {what} may hold")]
    Oversized {
        registry: String,
        what: String,
        size: u64,
    },
    #[error("registry auth file {path}: {reason}")]
    AuthFile { path: String, reason: String },
    #[error(transparent)]
    Image(#[from] sandstone_oci::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
