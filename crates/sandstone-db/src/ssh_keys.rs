//! SSH public keys for the daemon's SSH gateway. Each is registered by an
//! API key (Sandbox0's `/users/me/ssh-keys`, where the calling key is
//! "me") and opens shells in that key's team's sandboxes for as long as
//! the key itself may run commands there. A fingerprint is registered
//! once in the installation, so a login names exactly one owner.

use crate::Result;
use futures_util::future::BoxFuture;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKeyRow {
    pub id: String,
    /// The API key that registered it (and whose rights it carries).
    pub api_key_id: String,
    pub team_id: String,
    pub name: String,
    /// The key in OpenSSH's one-line form, without its comment.
    pub public_key: String,
    /// Its algorithm, as OpenSSH names it (`ssh-ed25519`, ...).
    pub key_type: String,
    /// `SHA256:` and the unpadded base64 of its digest, as `ssh-keygen -l`
    /// shows it.
    pub fingerprint: String,
    pub comment: String,
    pub created_at: i64,
    pub updated_at: i64,
}

pub trait SshKeyStore: Send + Sync {
    /// Registers a key; `false` when its fingerprint already is.
    fn insert_ssh_key<'a>(&'a self, k: &'a SshKeyRow) -> BoxFuture<'a, Result<bool>>;
    /// The keys `api_key_id` registered, oldest first.
    fn list_ssh_keys<'a>(&'a self, api_key_id: &'a str) -> BoxFuture<'a, Result<Vec<SshKeyRow>>>;
    /// Removes one of the keys `api_key_id` registered; `false` when it
    /// has none of that id.
    fn delete_ssh_key<'a>(
        &'a self,
        api_key_id: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool>>;
    /// The key a login offers, by its fingerprint.
    fn ssh_key_by_fingerprint<'a>(
        &'a self,
        fingerprint: &'a str,
    ) -> BoxFuture<'a, Result<Option<SshKeyRow>>>;
}
