//! TaskVault's engine: content-addressed caching of task results.
//!
//! A [`Vault`] maps a [`TaskKey`] (namespace, task name, input digests and further ingredients,
//! see `docs/keys.md`) to an [`Entry`]: a manifest of outputs stored as verified,
//! content-addressed blobs, plus provenance. The engine never reads environment variables or
//! configuration files on its own; callers resolve [`Settings`] and pass them in.

mod access;
mod archive;
pub mod audit;
mod claim;
pub mod clock;
pub mod config;
pub mod digest;
pub mod entry;
pub mod error;
mod fork;
mod generation;
mod hot;
pub mod key;
mod statcache;
pub mod store;
pub mod tree;
mod vault;

pub use archive::{ExportReport, ImportReport};
pub use claim::{Claim, ClaimGuard, Destination, DetachedClaim, Fetched};
pub use config::{ConfigFile, Policy, RemoteFile, Settings};
pub use digest::{Algorithm, Digest};
pub use entry::{Entry, Filter, Ingredients, OutputKind, Status};
pub use error::{Error, Result};
pub use key::{Input, InputKind, InputRecord, TaskKey};
pub use store::{LeaseAsked, LeaseEnded, LeaseEvent};
pub use vault::GcReport;
pub use vault::exchange::{Admitted, Arrived, BlobStream, DestinationFile, Exported};
pub use vault::migrate::{MetadataReport, MigrateReport};
pub use vault::{
    ItemProgress, Output, PreparedSave, Progress, SaveOptions, Served, Stats, Vault, VerifyReport,
};

/// The README's Rust examples, compiled by `cargo test --doc -p taskvault` (scripts/test.sh).
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
