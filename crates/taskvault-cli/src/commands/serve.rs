//! `taskvault serve` and `taskvault token create|list|revoke`.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result};
use taskvault::Vault;
use taskvault_server::{ServeOptions, server_dir, tokens};
use taskvault_settings::Resolved;

use crate::Outcome;
use crate::cli::{Cli, ServeArgs, TokenCommand};
use crate::human;

/// The token file: the flag, else `TASKVAULT_TOKENS_FILE`, else the vault's own.
fn tokens_file(resolved: &Resolved, flag: Option<&std::path::Path>) -> std::path::PathBuf {
    flag.map(std::path::Path::to_owned)
        .or_else(|| resolved.tokens_file.clone())
        .unwrap_or_else(|| tokens::tokens_path(&server_dir(&resolved.settings.vault_dir)))
}

pub fn serve(_cli: &Cli, resolved: Resolved, a: &ServeArgs) -> Result<Outcome> {
    let dir = resolved.settings.vault_dir.clone();
    let tokens_file = tokens_file(&resolved, a.tokens_file.as_deref());
    let has_tokens = !tokens::list(&tokens_file)?.is_empty();
    let listen = a.listen.unwrap_or_else(|| {
        let ip = if has_tokens || a.insecure_no_auth {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        };
        SocketAddr::new(ip, resolved.service_port)
    });
    let vault = Vault::open(resolved.settings)
        .and_then(Vault::long_lived)
        .with_context(|| format!("cannot open the vault at {}", dir.display()))?;
    let mut options = ServeOptions::new(listen);
    options.insecure_no_auth = a.insecure_no_auth;
    options.max_upload_bytes = a.max_upload_size;
    options.max_concurrent_uploads = a.max_uploads.max(1);
    options.request_timeout = a.timeout;
    options.tokens_file = Some(tokens_file);
    taskvault_server::serve_blocking(vault, options, |addr| {
        // The first line on stdout is the address (a test or a script reads it, with port 0).
        let _ = writeln!(std::io::stdout(), "listening on http://{addr}");
        let _ = std::io::stdout().flush();
        let auth = if has_tokens {
            "tokens required"
        } else if addr.ip().is_loopback() {
            "no tokens yet: this machine only (`taskvault token create` to serve others)"
        } else {
            "NO AUTHENTICATION (--insecure-no-auth)"
        };
        human::note(format!("Serving {} on http://{addr} ({auth})", dir.display()));
    })?;
    Ok(Outcome::Ok)
}

pub fn token(cli: &Cli, resolved: &Resolved, c: &TokenCommand) -> Result<Outcome> {
    let file = tokens_file(resolved, None);
    match c {
        TokenCommand::Create { scope, namespaces, name } => {
            let name = name.clone().unwrap_or_else(|| format!("{scope}:{}", namespaces.join(",")));
            let (token, rec) = tokens::create(&file, &name, *scope, namespaces)?;
            if cli.json {
                human::json(&serde_json::json!({"token": token, "record": rec}))?;
            } else {
                human::out(&token)?;
                human::note(format!(
                    "Token {} ({}, {} on {}): shown once; only its hash is stored in {}",
                    rec.id,
                    rec.name,
                    rec.scope,
                    rec.namespaces.join(", "),
                    file.display()
                ));
            }
        }
        TokenCommand::List => {
            let list = tokens::list(&file)?;
            if cli.json {
                human::json(&list)?;
            } else if list.is_empty() {
                human::note("No tokens: the server serves this machine only, without auth.");
            } else {
                for t in &list {
                    let state = match t.revoked_ms {
                        Some(ms) => format!("revoked {}", human::time(ms)),
                        None => "live".into(),
                    };
                    human::out(format!(
                        "{}  {:<24} {:<6} {:<20} created {}  {state}",
                        t.id,
                        t.name,
                        t.scope.to_string(),
                        t.namespaces.join(","),
                        human::time(t.created_ms)
                    ))?;
                }
            }
        }
        TokenCommand::Revoke { token } => {
            let rec = tokens::revoke(&file, token)?;
            if cli.json {
                human::json(&rec)?;
            } else {
                human::note(human::check(&format!("Revoked token {} ({})", rec.id, rec.name)));
            }
        }
    }
    Ok(Outcome::Ok)
}
