//! `taskvault serve`: one vault shared by every machine of a team, over HTTP.
//!
//! The server is a thin layer over the engine's [`Vault`]: handlers authenticate (`tokens`),
//! check namespaces, and run the engine's blocking calls on tokio's blocking pool; blob bodies
//! stream both ways in bounded chunks (`api`), uploads are verified before they are visible
//! (`uploads`). The wire protocol is `docs/protocol.md`; the OpenAPI document is generated from
//! the handlers' annotations and served at `/v1/openapi.json`.

pub mod api;
pub mod claims;
pub mod error;
pub mod group;
pub mod hot;
pub mod metrics;
pub mod tokens;
pub mod tools;
pub mod uploads;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::routing::get;
use taskvault::Vault;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// How a server runs; every field has a default suited to a team's cache host.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// Serve without tokens on a non-loopback address.
    pub insecure_no_auth: bool,
    /// The largest blob an upload may carry.
    pub max_upload_bytes: u64,
    /// Uploads received at once; more wait (up to `request_timeout`) and are then refused (503).
    pub max_concurrent_uploads: usize,
    /// Longest wait for a request's next bytes (or an upload slot).
    pub request_timeout: Duration,
    /// The token file; default `server/tokens.json` of the vault ([`tokens::tokens_path`]).
    pub tokens_file: Option<PathBuf>,
}

impl ServeOptions {
    pub fn new(listen: SocketAddr) -> ServeOptions {
        ServeOptions {
            listen,
            insecure_no_auth: false,
            max_upload_bytes: 16 << 30,
            max_concurrent_uploads: 64,
            request_timeout: Duration::from_secs(60),
            tokens_file: None,
        }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub vault: Arc<Vault>,
    pub tokens: tokens::Tokens,
    pub uploads: uploads::Uploads,
    pub metrics: metrics::Metrics,
    pub options: ServeOptions,
    /// The vault's size cap in bytes, if it has one.
    pub cap_bytes: Option<u64>,
    pub upload_slots: Arc<tokio::sync::Semaphore>,
    pub claims: claims::Claims,
    /// Small verified blobs kept in memory.
    pub hot: hot::HotBlobs,
    /// Saves of the build tools' uploads, committed together when they arrive together.
    pub group: group::GroupCommit,
}

/// The directory of the server's own state (tokens, uploads, proofs) inside the vault.
pub fn server_dir(vault_dir: &Path) -> PathBuf {
    vault_dir.join("server")
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "TaskVault",
        description = "The native API of `taskvault serve`: entries by key, blobs by digest. See docs/protocol.md.",
    ),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The routes and the OpenAPI document built from their annotations. Requests to the routes
/// that answer at once must have their answer within `timeout` (408 otherwise); blob bodies
/// (an idle timeout of their own) and claims (long polls) are not bounded as a whole.
fn routes(timeout: Duration) -> (axum::Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(api::healthz))
        .routes(routes!(api::get_entry, api::put_entry))
        .routes(routes!(api::missing_blobs))
        .routes(routes!(api::renew_claim, api::release_claim))
        .routes(routes!(api::log))
        .routes(routes!(api::show))
        .routes(routes!(api::stats))
        .routes(routes!(api::gc))
        // Applies to the routes above only.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .routes(routes!(api::get_blob, api::put_blob, api::head_blob))
        .routes(routes!(api::claim))
        .split_for_parts()
}

/// The OpenAPI document (what `/v1/openapi.json` serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes(Duration::from_secs(60)).1
}

/// The application: routes, metrics, limits.
pub fn app(state: Arc<AppState>) -> axum::Router {
    let (router, doc) = routes(state.options.request_timeout);
    let doc = Arc::new(doc.to_pretty_json().expect("the OpenAPI document serializes"));
    router
        .route(
            "/v1/openapi.json",
            get(move || {
                let doc = Arc::clone(&doc);
                async move {
                    ([(axum::http::header::CONTENT_TYPE, "application/json")], (*doc).clone())
                }
            }),
        )
        .route("/metrics", get(metrics::metrics))
        // The build tools' own protocols (`tools`), under the same layers.
        .merge(tools::turbo::routes())
        .merge(tools::bazel::routes())
        .merge(tools::ccache::routes())
        .merge(tools::sccache::routes())
        .merge(tools::gradle::routes())
        .layer(axum::middleware::map_response(error::json_errors))
        // Protocols whose clients want errors as text.
        .merge(tools::nx::routes())
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), metrics::track))
        // Entry documents and digest lists; blob bodies are streams and not limited here.
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
        .with_state(state)
}

/// Opens the state for a vault: refuses to serve a non-loopback address without tokens unless
/// told to.
pub fn state(vault: Vault, options: ServeOptions) -> Result<Arc<AppState>> {
    let dir = server_dir(&vault.settings().vault_dir);
    let tokens_file = options.tokens_file.clone().unwrap_or_else(|| tokens::tokens_path(&dir));
    let tokens = tokens::Tokens::new(&tokens_file)?;
    if !options.listen.ip().is_loopback() && !tokens.required()? && !options.insecure_no_auth {
        anyhow::bail!(
            "refusing to serve {} without tokens: anyone who can reach it could read and write \
             the vault. Create one with `taskvault token create --scope write --namespace NS`, \
             or pass --insecure-no-auth on a trusted network",
            options.listen
        );
    }
    let shared_uploads = vault.upload_area().context("cannot open the replicas' shared uploads")?;
    let uploads = uploads::Uploads::new(&dir, shared_uploads)
        .with_context(|| format!("cannot prepare {}", dir.display()))?;
    let cap_bytes = vault.settings().max_size_bytes.filter(|c| *c > 0);
    let claims =
        claims::Claims::new(&vault).context("cannot watch the claims of other replicas")?;
    let vault = Arc::new(vault);
    let group = group::GroupCommit::start(Arc::clone(&vault))
        .context("cannot start the committing thread")?;
    Ok(Arc::new(AppState {
        upload_slots: Arc::new(tokio::sync::Semaphore::new(options.max_concurrent_uploads)),
        vault,
        tokens,
        uploads,
        metrics: metrics::Metrics::default(),
        options,
        cap_bytes,
        claims,
        hot: hot::HotBlobs::new(16 << 20),
        group,
    }))
}

/// Serves until SIGTERM or SIGINT, then stops accepting, lets requests in flight finish, and
/// flushes the vault. `ready` is told the bound address once the server accepts connections.
pub fn serve_blocking(
    vault: Vault,
    options: ServeOptions,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("taskvault-serve")
        .build()
        .context("cannot start the server's runtime")?;
    let state = state(vault, options)?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(state.options.listen)
            .await
            .with_context(|| format!("cannot listen on {}", state.options.listen))?;
        let addr = listener.local_addr()?;
        ready(addr);
        let reaper = {
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                loop {
                    let s = Arc::clone(&state);
                    let _ = tokio::task::spawn_blocking(move || s.uploads.reap(&s.vault)).await;
                    tokio::time::sleep(Duration::from_secs(600)).await;
                }
            })
        };
        tracing::info!("serving {} on http://{addr}", state.vault.settings().vault_dir.display());
        axum::serve(listener, app(Arc::clone(&state)))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("the server failed")?;
        reaper.abort();
        tracing::info!("stopped accepting; requests in flight have finished");
        anyhow::Ok(())
    })?;
    runtime.shutdown_timeout(Duration::from_secs(30));
    let state = Arc::into_inner(state);
    if let Some(s) = state {
        s.vault.flush().context("flushing the vault")?;
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM can be handled");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT can be handled");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
