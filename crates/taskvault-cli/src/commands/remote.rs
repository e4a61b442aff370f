//! The remote tier as the CLI uses it: a local miss asks the server, a save is shared with it,
//! and a server that cannot be used is a warning, never a failed command (unless
//! `remote.required`).

use anyhow::Result;
use taskvault::{Entry, TaskKey, Vault};
use taskvault_remote::{Pushed, Remote, RemoteError};
use taskvault_settings::Resolved;

/// The configured server's client, if there is one.
pub fn client(resolved: &Resolved) -> Result<Option<Remote>> {
    let Some(r) = &resolved.remote else { return Ok(None) };
    let config = taskvault_remote::Config::from(r);
    Ok(Some(Remote::new(config, &resolved.settings.namespace)?))
}

fn fail(e: RemoteError) -> anyhow::Error {
    match e {
        RemoteError::Local(e) => e.into(),
        other => anyhow::anyhow!("remote: {other}"),
    }
}

/// What asking the server for a key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pulled {
    /// The entry is now in the local vault.
    Hit,
    Miss,
    /// The server could not be used (warned).
    Unavailable,
}

/// Asks the server for `key` after a local miss; a hit is stored in the local vault.
pub fn pull(r: &Remote, v: &Vault, key: &TaskKey) -> Result<Pulled> {
    Ok(pull_to(r, v, key, None, None)?.0)
}

/// [`pull`], and for `cache get` a file output fetched from the server is written to `dest`
/// as it arrives (`Some(entry)`: it is there, the hit counted); otherwise the caller restores
/// it.
pub fn pull_to(
    r: &Remote,
    v: &Vault,
    key: &TaskKey,
    dest: Option<&std::path::Path>,
    ahead: Option<taskvault_remote::Prefetched>,
) -> Result<(Pulled, Option<Entry>)> {
    match r.degrade(r.pull_to(v, key, dest, ahead), "this lookup").map_err(fail)? {
        Some(Some((e, restored))) => {
            v.count_remote_hit()?;
            if restored {
                v.served(&e, "get")?;
                return Ok((Pulled::Hit, Some(e)));
            }
            Ok((Pulled::Hit, None))
        }
        Some(None) => Ok((Pulled::Miss, None)),
        None => Ok((Pulled::Unavailable, None)),
    }
}

/// Shares a run just saved with the server (unless the remote is read-only).
pub fn push(r: &Remote, v: &Vault, e: &Entry) -> Result<Option<Pushed>> {
    if r.read_only() {
        return Ok(None);
    }
    r.degrade(r.push(v, e), "this save").map_err(fail)
}

/// Takes (or waits on) the server's claim of `key` (writable remotes only); `None` when the
/// server cannot be used (warned).
pub fn claim(r: &Remote, key: &TaskKey) -> Result<Option<taskvault_remote::Claimed>> {
    if r.read_only() {
        return Ok(None);
    }
    r.degrade(r.claim(key), "this run").map_err(fail)
}
