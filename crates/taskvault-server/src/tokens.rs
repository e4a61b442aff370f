//! Bearer tokens: each has a name, a scope (`read`, `write` which implies read, `admin` which
//! implies both) and the namespaces it may use (`*` for all). Only a SHA-256 hash of a token is
//! stored, in `server/tokens.json` of the server's vault directory; the token itself is shown
//! once, when it is made. The file is re-read when it changes, so `taskvault token revoke`
//! takes effect on a running server at its next request.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use sha2::Digest as _;

/// What a token may do. Ordered: each scope includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Scope, String> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(format!("unknown scope {other:?}: read, write or admin")),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        })
    }
}

/// One stored token (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenRecord {
    /// Short public identifier, also the token's second field (`tvk_<id>_<secret>`).
    pub id: String,
    pub name: String,
    /// SHA-256 of the whole token, hex.
    pub hash: String,
    pub scope: Scope,
    pub namespaces: Vec<String>,
    pub created_ms: i64,
    #[serde(default)]
    pub revoked_ms: Option<i64>,
}

impl TokenRecord {
    pub fn allows(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|n| n == "*" || n == namespace)
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct TokenFile {
    version: u32,
    tokens: Vec<TokenRecord>,
}

/// The token file of a server directory.
pub fn tokens_path(server_dir: &Path) -> PathBuf {
    server_dir.join("tokens.json")
}

/// A namespace name a token or a URL may carry: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting
/// with a dot (it names a directory of the server).
pub fn valid_namespace(ns: &str) -> bool {
    (1..=64).contains(&ns.len())
        && !ns.starts_with('.')
        && ns.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn load(path: &Path) -> Result<TokenFile> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a token file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn store(path: &Path, file: &TokenFile) -> Result<()> {
    let dir = path.parent().expect("the token file has a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".tokens-{}.tmp", std::process::id()));
    let text = serde_json::to_vec_pretty(file)?;
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Runs `f` on the token file under an exclusive lock (a file beside it), and writes back what
/// it leaves.
fn update<T>(path: &Path, f: impl FnOnce(&mut Vec<TokenRecord>) -> Result<T>) -> Result<T> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path.file_name().map_or("tokens".into(), |n| n.to_string_lossy().into_owned());
    let lock_path = dir.join(format!("{name}.lock"));
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    lock.lock()?;
    let mut file = load(path)?;
    let out = f(&mut file.tokens)?;
    file.version = 1;
    store(path, &file)?;
    lock.unlock()?;
    Ok(out)
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    use std::io::Read as _;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("cannot read /dev/urandom")?;
    Ok(b)
}

pub fn hash_token(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Makes a token and stores its hash; returns the token (shown once) and its record.
pub fn create(
    path: &Path,
    name: &str,
    scope: Scope,
    namespaces: &[String],
) -> Result<(String, TokenRecord)> {
    use base64::Engine as _;
    if namespaces.is_empty() {
        anyhow::bail!("a token needs at least one --namespace (or `*` for all)");
    }
    for ns in namespaces {
        if ns != "*" && !valid_namespace(ns) {
            anyhow::bail!(
                "namespace {ns:?} is not valid: 1 to 64 letters, digits, '.', '_' or '-', not \
                 starting with '.'"
            );
        }
    }
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        anyhow::bail!("a token name must be 1 to 128 printable characters");
    }
    let id = hex::encode(random_bytes::<4>()?);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
    let token = format!("tvk_{id}_{secret}");
    let record = TokenRecord {
        id,
        name: name.to_owned(),
        hash: hash_token(&token),
        scope,
        namespaces: namespaces.to_vec(),
        created_ms: taskvault::clock::now_ms(),
        revoked_ms: None,
    };
    let stored = record.clone();
    update(path, |tokens| {
        if tokens.iter().any(|t| t.name == name && t.revoked_ms.is_none()) {
            anyhow::bail!(
                "a token named {name:?} exists already; revoke it first or pick another name"
            );
        }
        tokens.push(stored);
        Ok(())
    })?;
    Ok((token, record))
}

/// Every token record, revoked ones included.
pub fn list(path: &Path) -> Result<Vec<TokenRecord>> {
    Ok(load(path)?.tokens)
}

/// Revokes the token with this id or name; returns its record.
pub fn revoke(path: &Path, which: &str) -> Result<TokenRecord> {
    update(path, |tokens| {
        let live: Vec<usize> = (0..tokens.len())
            .filter(|&i| tokens[i].revoked_ms.is_none())
            .filter(|&i| tokens[i].id == which || tokens[i].name == which)
            .collect();
        match live.as_slice() {
            [i] => {
                tokens[*i].revoked_ms = Some(taskvault::clock::now_ms());
                Ok(tokens[*i].clone())
            }
            [] => {
                anyhow::bail!("no live token has id or name {which:?} (see `taskvault token list`)")
            }
            _ => anyhow::bail!("several live tokens are named {which:?}: revoke one by its id"),
        }
    })
}

/// Identity of the token file's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ino: m.ino(),
    })
}

/// The server's view of the token file, re-read when it changes.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    cache: RwLock<(Option<Stamp>, Arc<Vec<TokenRecord>>)>,
}

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No token exists on this server: everything is allowed (loopback or
    /// `--insecure-no-auth` only).
    Open,
    Token(TokenRecord),
}

impl Caller {
    /// The name the audit trail records.
    pub fn name(&self) -> &str {
        match self {
            Caller::Open => "anonymous",
            Caller::Token(t) => &t.name,
        }
    }
}

/// Why a request is not allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No credentials, or ones that are not a live token (401).
    Unauthenticated(&'static str),
    /// A live token without the scope or the namespace (403).
    Forbidden(String),
}

impl Tokens {
    /// The tokens of the file at `path` (the server only reads it: it may be read-only, a
    /// Kubernetes Secret, say; a change to it applies to the next request).
    pub fn new(path: &Path) -> Result<Tokens> {
        let tokens = Tokens { path: path.to_owned(), cache: RwLock::new((None, Arc::default())) };
        tokens.current()?;
        Ok(tokens)
    }

    /// Whether any token was ever made (then every request must carry one).
    pub fn required(&self) -> Result<bool> {
        Ok(!self.current()?.is_empty())
    }

    fn current(&self) -> Result<Arc<Vec<TokenRecord>>> {
        let now = stamp(&self.path);
        {
            let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
            if cache.0 == now && now.is_some() || (now.is_none() && cache.1.is_empty()) {
                return Ok(Arc::clone(&cache.1));
            }
        }
        let file = load(&self.path)?;
        let tokens = Arc::new(file.tokens);
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) = (now, Arc::clone(&tokens));
        Ok(tokens)
    }

    /// Authenticates the credentials of a request (`Authorization` header value): `Bearer
    /// <token>`, or Basic with the token as the password.
    pub fn authenticate(&self, authorization: Option<&str>) -> std::result::Result<Caller, Denied> {
        let tokens = match self.current() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("token file: {e:#}");
                return Err(Denied::Unauthenticated("the server cannot read its token file"));
            }
        };
        if tokens.is_empty() {
            return Ok(Caller::Open);
        }
        let Some(value) = authorization else {
            return Err(Denied::Unauthenticated("this server requires a token"));
        };
        let token = parse_authorization(value)
            .ok_or(Denied::Unauthenticated("the Authorization header is not a bearer token"))?;
        let hash = hash_token(&token);
        let found = tokens.iter().find(|t| constant_time_eq(t.hash.as_bytes(), hash.as_bytes()));
        match found {
            Some(t) if t.revoked_ms.is_none() => Ok(Caller::Token(t.clone())),
            Some(_) => Err(Denied::Unauthenticated("the token has been revoked")),
            None => Err(Denied::Unauthenticated("the token is not known to this server")),
        }
    }
}

impl Caller {
    /// Checks that the caller may act with `scope` in `namespace`.
    pub fn check(&self, scope: Scope, namespace: &str) -> std::result::Result<(), Denied> {
        let Caller::Token(t) = self else { return Ok(()) };
        if !t.allows(namespace) {
            return Err(Denied::Forbidden(format!(
                "token {:?} may not use namespace {namespace:?}",
                t.name
            )));
        }
        if t.scope < scope {
            return Err(Denied::Forbidden(format!(
                "token {:?} has scope {}; this needs {scope}",
                t.name, t.scope
            )));
        }
        Ok(())
    }

    /// Checks a server-wide operation (no namespace): needs `scope` and every namespace.
    pub fn check_global(&self, scope: Scope) -> std::result::Result<(), Denied> {
        let Caller::Token(t) = self else { return Ok(()) };
        if t.scope < scope || !t.namespaces.iter().any(|n| n == "*") {
            return Err(Denied::Forbidden(format!(
                "token {:?} is not an {scope} token for all namespaces",
                t.name
            )));
        }
        Ok(())
    }
}

fn parse_authorization(value: &str) -> Option<String> {
    use base64::Engine as _;
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        // Both alphabets, padded or not: clients differ (Bazel, Gradle, curl).
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::URL_SAFE,
            base64::engine::general_purpose::STANDARD_NO_PAD,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        let decoded = engines.iter().find_map(|e| e.decode(rest).ok())?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return Some(password.to_owned());
    }
    None
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_hashed_and_checked_by_scope_and_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let file = tokens_path(dir.path());
        let (token, rec) = create(&file, "ci", Scope::Write, &["ci".into()]).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(&token), "the token itself is never stored");
        assert!(text.contains(&rec.hash));
        let tokens = Tokens::new(&file).unwrap();
        assert!(matches!(tokens.authenticate(None), Err(Denied::Unauthenticated(_))));
        let caller = tokens.authenticate(Some(&format!("Bearer {token}"))).unwrap();
        assert!(caller.check(Scope::Write, "ci").is_ok());
        assert!(caller.check(Scope::Read, "ci").is_ok());
        assert!(matches!(caller.check(Scope::Admin, "ci"), Err(Denied::Forbidden(_))));
        assert!(matches!(caller.check(Scope::Read, "web"), Err(Denied::Forbidden(_))));
        let wrong = format!("Bearer {}x", token);
        assert!(matches!(tokens.authenticate(Some(&wrong)), Err(Denied::Unauthenticated(_))));
        revoke(&file, "ci").unwrap();
        assert_eq!(
            tokens.authenticate(Some(&format!("Bearer {token}"))).unwrap_err(),
            Denied::Unauthenticated("the token has been revoked")
        );
    }

    #[test]
    fn basic_auth_carries_the_token_as_password_in_either_alphabet() {
        use base64::Engine as _;
        let t = "tvk_0a_b?c>";
        for e in [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::URL_SAFE,
            base64::engine::general_purpose::STANDARD_NO_PAD,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            // A token whose Basic form needs padding and the alphabets' own characters.
            for user in ["user", "u", "us"] {
                let v = format!("Basic {}", e.encode(format!("{user}:{t}")));
                assert_eq!(parse_authorization(&v).as_deref(), Some(t), "{v}");
            }
        }
        assert_eq!(parse_authorization("Token x"), None);
    }

    #[test]
    fn namespace_names_cannot_name_paths() {
        for ok in ["ci", "a.b", "web-1", "A_b"] {
            assert!(valid_namespace(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65), ".hidden"] {
            assert!(!valid_namespace(bad), "{bad:?}");
        }
    }
}
