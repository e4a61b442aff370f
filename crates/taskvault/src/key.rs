//! Task keys: a versioned, canonical, length-prefixed encoding of everything that determines a
//! result, hashed into the key digest. `docs/keys.md` lists every ingredient.

use std::path::{Path, PathBuf};

use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::tree;

/// Bumped whenever the encoding below changes, so that old keys can never match new ones.
pub const KEY_VERSION: u8 = 1;
const MAGIC: &[u8] = b"taskvault/key";

/// Something a task's result depends on, before hashing.
#[derive(Debug, Clone)]
pub enum Input {
    /// A path: a file is hashed by content, a directory by its tree. Symlinks to files are followed.
    Path(PathBuf),
    /// In-memory bytes; hashed exactly like a file with the same content.
    Bytes(Vec<u8>),
    /// An input already hashed (see [`InputRecord::hash_reader`], for a stream such as stdin).
    Hashed(InputRecord),
}

/// How an input was fingerprinted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// The digest of a byte string (a file's content or in-memory bytes). The file name is not
    /// part of it: the same content under another name is the same input.
    Content,
    /// The digest of a directory's canonical tree manifest (relative paths, kinds, modes, contents).
    Tree,
}

/// One hashed input, as recorded in an entry's provenance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InputRecord {
    pub kind: InputKind,
    pub digest: Digest,
    /// Bytes of content (for a tree, the sum of its files).
    pub size: u64,
    /// Where it came from (a path as given), for humans only; never part of the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

impl InputRecord {
    /// Hashes `input` with `algorithm`.
    pub fn hash(algorithm: Algorithm, input: &Input) -> Result<InputRecord> {
        match input {
            Input::Bytes(b) => Ok(InputRecord {
                kind: InputKind::Content,
                digest: algorithm.digest(b),
                size: b.len() as u64,
                origin: None,
            }),
            Input::Path(p) => hash_path(algorithm, p),
            Input::Hashed(r) if r.digest.algorithm() != algorithm => Err(Error::Other(format!(
                "input digest {} does not use the key's algorithm {}",
                r.digest,
                algorithm.name()
            ))),
            Input::Hashed(r) => Ok(r.clone()),
        }
    }

    /// Hashes a stream (such as standard input) in bounded memory, exactly as a file with the
    /// same content would be.
    pub fn hash_reader(
        algorithm: Algorithm,
        src: &mut dyn std::io::Read,
        origin: &str,
    ) -> Result<InputRecord> {
        let (digest, size) = crate::digest::hash_reader_sized(algorithm, src, 1 << 16)
            .map_err(|e| Error::BadInput { path: origin.into(), message: e.to_string() })?;
        Ok(InputRecord { kind: InputKind::Content, digest, size, origin: Some(origin.to_owned()) })
    }
}

fn hash_path(algorithm: Algorithm, path: &Path) -> Result<InputRecord> {
    let bad = |message: String| Error::BadInput { path: path.to_owned(), message };
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => bad("no such file or directory".into()),
        _ => bad(e.to_string()),
    })?;
    let origin = Some(path.display().to_string());
    if meta.is_dir() {
        let manifest = tree::Manifest::scan(algorithm, path)?;
        Ok(InputRecord {
            kind: InputKind::Tree,
            digest: manifest.digest(algorithm),
            size: manifest.content_size(),
            origin,
        })
    } else if meta.is_file() {
        let (digest, size) = crate::digest::hash_file(algorithm, path).map_err(|e| match e {
            Error::Io(io) | Error::IoAt { source: io, .. } => bad(io.to_string()),
            other => other,
        })?;
        Ok(InputRecord { kind: InputKind::Content, digest, size, origin })
    } else {
        Err(bad("not a regular file or directory".into()))
    }
}

/// A fully determined task key: its ingredients and the digest of their encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskKey {
    pub namespace: String,
    pub task: String,
    pub algorithm: Algorithm,
    pub inputs: Vec<InputRecord>,
    /// Further labelled ingredients (a command line, an environment value, code identity), in the
    /// order the caller adds them. Labels and values are both part of the key.
    pub extras: Vec<(String, Vec<u8>)>,
    digest: Digest,
}

impl TaskKey {
    pub fn new(
        algorithm: Algorithm,
        namespace: &str,
        task: &str,
        inputs: Vec<InputRecord>,
        extras: Vec<(String, Vec<u8>)>,
    ) -> Result<TaskKey> {
        if task.is_empty() {
            return Err(Error::Other("task name must not be empty".into()));
        }
        if let Some(bad) = inputs.iter().find(|i| i.digest.algorithm() != algorithm) {
            return Err(Error::Other(format!(
                "input digest {} does not use the key's algorithm {}",
                bad.digest,
                algorithm.name()
            )));
        }
        let mut key = TaskKey {
            namespace: namespace.to_owned(),
            task: task.to_owned(),
            algorithm,
            inputs,
            extras,
            digest: Digest::new(algorithm, [0; 32]),
        };
        key.digest = algorithm.digest(&key.encode());
        Ok(key)
    }

    /// The key digest: what the metadata store is indexed by.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The canonical encoding. Every variable-length field is prefixed by its length as a
    /// little-endian u64, so no two different ingredient lists can encode to the same bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(MAGIC);
        out.push(KEY_VERSION);
        put(&mut out, self.algorithm.name().as_bytes());
        put(&mut out, self.namespace.as_bytes());
        put(&mut out, self.task.as_bytes());
        out.extend_from_slice(&(self.inputs.len() as u64).to_le_bytes());
        for input in &self.inputs {
            out.push(match input.kind {
                InputKind::Content => b'c',
                InputKind::Tree => b't',
            });
            put(&mut out, input.digest.as_bytes());
        }
        out.extend_from_slice(&(self.extras.len() as u64).to_le_bytes());
        for (label, value) in &self.extras {
            put(&mut out, label.as_bytes());
            put(&mut out, value);
        }
        out
    }
}

/// Appends a length-prefixed field.
pub(crate) fn put(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u64).to_le_bytes());
    out.extend_from_slice(field);
}

#[cfg(test)]
mod tests;
