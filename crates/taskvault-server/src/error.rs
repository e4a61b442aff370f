//! Every error a request can meet, answered as JSON `{"error": "...", ...}` with the status that
//! says what the client should do (see `docs/protocol.md`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::tokens::Denied;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed key, digest, namespace, manifest or body.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// An entry whose blobs are not all present in the namespace.
    #[error("{message}")]
    MissingBlobs { message: String, missing: Vec<String> },
    /// A lease that is no longer the claim's.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    RangeNotSatisfiable(String),
    /// The upload cannot fit in the vault even after eviction, or on its disk.
    #[error("{0}")]
    InsufficientStorage(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Internal(String),
    /// A method the route's protocol does not have.
    #[error("{0}")]
    MethodNotAllowed(String),
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> ApiError {
        match d {
            Denied::Unauthenticated(why) => ApiError::Unauthorized(why.into()),
            Denied::Forbidden(why) => ApiError::Forbidden(why),
        }
    }
}

impl From<taskvault::Error> for ApiError {
    fn from(e: taskvault::Error) -> ApiError {
        match e {
            taskvault::Error::BadInput { message, .. } => ApiError::BadRequest(message),
            taskvault::Error::BadDigest(m) => ApiError::BadRequest(m),
            taskvault::Error::TooLarge { .. } => ApiError::TooLarge(e.to_string()),
            // Evicted between the presence check and the commit: the client uploads it again.
            taskvault::Error::BlobVanished(d) => ApiError::MissingBlobs {
                message: format!("blob {d} was removed meanwhile; upload it again"),
                missing: vec![d],
            },
            // A database or object store that does not answer now: the client retries later
            // or treats it as a miss, and the replica keeps serving what it can.
            taskvault::Error::Meta { .. } | taskvault::Error::Store { .. } => {
                tracing::warn!("storage: {e}");
                ApiError::Busy(e.to_string())
            }
            other => {
                tracing::error!("engine: {other}");
                ApiError::Internal(other.to_string())
            }
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> ApiError {
        tracing::error!("worker: {e}");
        ApiError::Internal("a worker thread failed".into())
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MissingBlobs { .. } | ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

/// The JSON body of every error response.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// Digests the namespace lacks (a commit refused with 409).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut headers = axum::http::HeaderMap::new();
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"taskvault\""),
            );
        }
        let body = match self {
            ApiError::MissingBlobs { message, missing } => ErrorBody { error: message, missing },
            other => ErrorBody { error: other.to_string(), missing: Vec::new() },
        };
        (status, headers, axum::Json(body)).into_response()
    }
}

/// Gives every error the JSON body the protocol promises, including the rejections axum makes
/// itself (an unknown route, a bad method, a path or query it cannot parse), which are text.
pub async fn json_errors(response: axum::response::Response) -> axum::response::Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10).await.unwrap_or_default();
    let mut error = String::from_utf8_lossy(&text).trim().to_owned();
    if error.is_empty() {
        error = status.canonical_reason().unwrap_or("error").to_owned();
    }
    let body = serde_json::to_vec(&ErrorBody { error, missing: Vec::new() }).unwrap_or_default();
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    axum::response::Response::from_parts(parts, axum::body::Body::from(body))
}
