//! Prometheus metrics at `/metrics`: requests by route and status, latency, hits, misses,
//! bytes in and out, saves, corrupt blobs, claims waiting, and the vault's stored bytes and
//! entries (read when scraped).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabels {
    tool: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

/// The routes the server has, as labels (a label is never made from a request's own text).
const ROUTES: &[&str] = &[
    "/healthz",
    "/metrics",
    "/v1/openapi.json",
    "/v1/ns/{ns}/entries/{key}",
    "/v1/ns/{ns}/blobs/missing",
    "/v1/ns/{ns}/blobs/{digest}",
    "/v1/ns/{ns}/claims/{key}",
    "/v1/ns/{ns}/claims/{key}/{lease}",
    "/v1/ns/{ns}/log",
    "/v1/ns/{ns}/runs/{hash}",
    "/v1/stats",
    "/v1/gc",
    "/v8/artifacts/status",
    "/v8/artifacts/events",
    "/v8/artifacts",
    "/v8/artifacts/{hash}",
    "/v1/cache/{hash}",
    "/bazel/{store}/{hash}",
    "/bazel/{instance}/{store}/{hash}",
    "/ccache/{key}",
    "/ccache/{dir}/{rest}",
    "/ns/{ns}/ccache/{key}",
    "/ns/{ns}/ccache/{dir}/{rest}",
    "/sccache",
    "/sccache/",
    "/sccache/{*path}",
    "/ns/{ns}/sccache",
    "/ns/{ns}/sccache/",
    "/ns/{ns}/sccache/{*path}",
    "/gradle/{key}",
    "/gradle/{ns}/{key}",
];

fn route_label(matched: Option<&MatchedPath>) -> &'static str {
    let Some(m) = matched else { return "unmatched" };
    ROUTES.iter().find(|r| **r == m.as_str()).copied().unwrap_or("other")
}

fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ if m.as_str() == "PROPFIND" => "PROPFIND",
        _ if m.as_str() == "MKCOL" => "MKCOL",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    hits: Counter,
    misses: Counter,
    saves: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    corrupt: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub claims_waiting: Gauge,
    stored_bytes: Gauge,
    entries: Gauge,
    evictions: Gauge<i64, std::sync::atomic::AtomicI64>,
    tool_hits: Family<ToolLabels, Counter>,
    tool_misses: Family<ToolLabels, Counter>,
    tool_saves: Family<ToolLabels, Counter>,
    tool_bytes_in: Family<ToolLabels, Counter>,
    tool_bytes_out: Family<ToolLabels, Counter>,
    tool_time_saved_ms: Family<ToolLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("taskvault");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
            ])
        });
        let m = Metrics {
            requests,
            latency,
            hits: Counter::default(),
            misses: Counter::default(),
            saves: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            corrupt: Gauge::default(),
            claims_waiting: Gauge::default(),
            stored_bytes: Gauge::default(),
            entries: Gauge::default(),
            evictions: Gauge::default(),
            tool_hits: Family::default(),
            tool_misses: Family::default(),
            tool_saves: Family::default(),
            tool_bytes_in: Family::default(),
            tool_bytes_out: Family::default(),
            tool_time_saved_ms: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "tool_hits",
            "Build-tool cache lookups answered with an artifact, by tool",
            m.tool_hits.clone(),
        );
        registry.register(
            "tool_misses",
            "Build-tool cache lookups answered 404, by tool",
            m.tool_misses.clone(),
        );
        registry.register(
            "tool_saves",
            "Build-tool artifacts stored, by tool",
            m.tool_saves.clone(),
        );
        registry.register(
            "tool_received_bytes",
            "Build-tool artifact bytes stored, by tool",
            m.tool_bytes_in.clone(),
        );
        registry.register(
            "tool_sent_bytes",
            "Build-tool artifact bytes served, by tool",
            m.tool_bytes_out.clone(),
        );
        registry.register(
            "tool_time_saved_milliseconds",
            "Work time the tools reported for the artifacts served (Turborepo sends it), by tool",
            m.tool_time_saved_ms.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            m.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to the response's headers, by route",
            m.latency.clone(),
        );
        registry.register("hits", "Entry lookups answered with an entry", m.hits.clone());
        registry.register("misses", "Entry lookups answered 404", m.misses.clone());
        registry.register("saves", "Entries committed", m.saves.clone());
        registry.register(
            "received_bytes",
            "Blob bytes received in verified uploads",
            m.bytes_in.clone(),
        );
        registry.register("sent_bytes", "Blob bytes sent", m.bytes_out.clone());
        registry.register(
            "corrupt_blobs",
            "Blobs found not to match their digests, quarantined (vault counter)",
            m.corrupt.clone(),
        );
        registry.register(
            "claims_waiting",
            "Clients waiting on another's claim",
            m.claims_waiting.clone(),
        );
        registry.register("stored_bytes", "Bytes stored in the vault", m.stored_bytes.clone());
        registry.register("entries", "Live entries in the vault", m.entries.clone());
        registry.register(
            "evictions",
            "Entries evicted by the cap (vault counter)",
            m.evictions.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn hit(&self) {
        self.hits.inc();
    }
    pub fn miss(&self) {
        self.misses.inc();
    }
    pub fn saved(&self) {
        self.saves.inc();
    }
    pub fn bytes_in(&self, n: u64) {
        self.bytes_in.inc_by(n);
    }
    pub fn bytes_out(&self, n: u64) {
        self.bytes_out.inc_by(n);
    }
    /// A build tool's lookup answered with an artifact of `size` bytes that took `duration_ms`.
    pub fn tool_hit(&self, tool: &'static str, size: u64, duration_ms: Option<i64>) {
        let l = ToolLabels { tool };
        self.hits.inc();
        self.tool_hits.get_or_create(&l).inc();
        self.tool_bytes_out.get_or_create(&l).inc_by(size);
        if let Some(ms) = duration_ms.filter(|ms| *ms > 0) {
            self.tool_time_saved_ms.get_or_create(&l).inc_by(ms as u64);
        }
    }
    pub fn tool_miss(&self, tool: &'static str) {
        self.misses.inc();
        self.tool_misses.get_or_create(&ToolLabels { tool }).inc();
    }
    pub fn tool_saved(&self, tool: &'static str, bytes: u64) {
        let l = ToolLabels { tool };
        self.saves.inc();
        self.tool_saves.get_or_create(&l).inc();
        self.tool_bytes_in.get_or_create(&l).inc_by(bytes);
    }

    /// The text exposition, with the vault's figures read now.
    pub fn render(&self, vault: &taskvault::Vault) -> String {
        if let Ok(s) = vault.stats() {
            self.stored_bytes.set(s.total_bytes);
            self.entries.set(s.entries);
            self.evictions.set(s.counters.evictions);
            self.corrupt.set(s.counters.corrupt);
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("metrics: {e}");
        }
        out
    }
}

/// Counts every request by its route pattern (never the raw path: keys and digests would make
/// a series each).
pub async fn track(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = route_label(req.extensions().get::<MatchedPath>());
    let method = method_label(req.method());
    let start = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let micros = start.elapsed().as_micros() as u64;
    // Every request at debug (`-vv` or log_level debug); refusals at info (a 404 is a miss,
    // ordinary traffic: debug), failures at warn.
    match status {
        500.. => tracing::warn!(target: "taskvault::request", method, route, status, micros),
        404 => tracing::debug!(target: "taskvault::request", method, route, status, micros),
        400.. => tracing::info!(target: "taskvault::request", method, route, status, micros),
        _ => tracing::debug!(target: "taskvault::request", method, route, status, micros),
    }
    s.metrics.latency.get_or_create(&RouteLabels { route }).observe(start.elapsed().as_secs_f64());
    s.metrics.requests.get_or_create(&RequestLabels { route, method, status }).inc();
    response
}

pub async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    let state = Arc::clone(&s);
    let text = tokio::task::spawn_blocking(move || state.metrics.render(&state.vault))
        .await
        .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}
