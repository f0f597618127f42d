//! OCI image layers as Sandstone template layers: each layer blob is
//! unpacked on its own into an empty directory (so a layer is stored once
//! and shared by every template that uses it, stacked as overlay lower
//! dirs), with the image format's whiteouts turned into overlayfs's
//! (`.wh.<name>` into a character device 0/0, `.wh..wh..opq` into the
//! `trusted.overlay.opaque` xattr), while the blob's digest and the
//! uncompressed tar's (the config's `diff_id`) are checked as it streams.
//!
//! A layer is untrusted input: a path with `..`, a file under a symlink
//! (an earlier entry could point it anywhere), a hard link out of the
//! layer and a device node are refused with the path named. Symlink
//! *targets* are kept as they are: they resolve inside the sandbox's own
//! root when followed there.

mod digest;
pub mod image;
mod layer;

pub use digest::Digest;
pub use image::{Image, ImageConfig, Layer};
pub use layer::{Compression, Expected, Unpacked, unpack};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid digest {0:?}: expected sha256:<64 hex digits>")]
    InvalidDigest(String),
    #[error("unknown layer media type {0:?}")]
    UnknownMediaType(String),
    #[error(
        "{what} is {actual}, not {expected} as the image says: the blob is corrupt or was tampered with"
    )]
    DigestMismatch {
        what: &'static str,
        expected: Digest,
        actual: Digest,
    },
    #[error("not an image: {0}")]
    NotAnImage(String),
    #[error("the image is for {have}, not {want}")]
    WrongArchitecture { want: String, have: String },
    #[error("layer entry {path:?} {reason}")]
    Unsafe { path: String, reason: &'static str },
    #[error("layer entry {path:?} is a {kind}, which a layer may not hold")]
    Unsupported { path: String, kind: String },
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
