//! The engine's error type: one enum, each variant carrying the context a user needs to act.

use std::path::PathBuf;

/// Everything that can go wrong inside the engine. A cache miss is never an error; it is `None`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O failure; the message from `fs-err` already names the path.
    #[error("{0}")]
    Io(#[from] std::io::Error),

    /// An I/O failure on a path that the operation names explicitly.
    #[error("{path}: {source}")]
    IoAt { path: PathBuf, source: std::io::Error },

    /// The metadata database failed.
    #[error("metadata database {path}: {source}")]
    Db { path: PathBuf, source: rusqlite::Error },

    /// The metadata database was written by a newer TaskVault.
    #[error(
        "metadata database {path} has schema version {found}, newer than this taskvault understands ({supported}); upgrade taskvault"
    )]
    SchemaTooNew { path: PathBuf, found: i64, supported: i64 },

    /// The configuration file is not valid.
    #[error("config {path}: {message}")]
    Config { path: PathBuf, message: String },

    /// An input given to a save or lookup cannot be used.
    #[error("input {path}: {message}")]
    BadInput { path: PathBuf, message: String },

    /// A requested output or destination cannot be used.
    #[error("{path}: {message}")]
    BadDestination { path: PathBuf, message: String },

    /// An entry is larger than its policy allows; nothing was stored.
    #[error(
        "output of task {task:?} is {size} bytes, over the policy limit max_size_bytes={limit}; nothing was stored"
    )]
    TooLarge { task: String, size: u64, limit: u64 },

    /// A hash argument matched no entry.
    #[error("no entry matches {0:?}")]
    NotFound(String),

    /// A hash argument matched several entries.
    #[error("{prefix:?} is ambiguous: it matches {count} entries; give more characters")]
    Ambiguous { prefix: String, count: usize },

    /// A digest string could not be parsed.
    #[error("invalid digest {0:?}")]
    BadDigest(String),

    /// An export archive is malformed, tampered with or hostile; nothing was imported.
    #[error("archive {path}: {message}; nothing was imported")]
    BadArchive { path: PathBuf, message: String },

    /// The metadata row of a run cannot be read back (damaged outside TaskVault); it is never
    /// served.
    #[error("the metadata row of run {run} is damaged: {message}")]
    DamagedRow { run: String, message: String },

    /// A stored blob failed verification (it has been quarantined).
    #[error("blob {digest} is corrupt: {message}")]
    Corrupt { digest: String, message: String },

    /// A save referenced a stored blob that was removed before the save committed (the save is
    /// retried with the bytes staged).
    #[error("blob {0} was removed while a save referenced it")]
    BlobVanished(String),

    /// A metadata store on a server (PostgreSQL) refused or failed a request.
    #[error("metadata store {store}: {message}")]
    Meta { store: String, message: String },

    /// The blob store (an object store: S3, GCS, Azure Blob) refused or failed a request.
    #[error("blob store {store}: {message}")]
    Store { store: String, message: String },

    /// Anything else, with its explanation.
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a path to a raw `std::io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::IoAt { path: path.into(), source })
    }
}
