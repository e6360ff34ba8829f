//! The HTTP transport seam.
//!
//! Channel clients build and parse requests themselves and send them through
//! a [`Transport`]: reqwest in production; in deterministic simulation the
//! simulator's router called in-process, so the same signing, envelope and
//! classification code runs with no sockets and no real time.

use async_trait::async_trait;
use bytes::Bytes;

/// An HTTP request as a channel client builds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET` or `POST`.
    pub method: http::Method,
    /// Absolute URL, query string included.
    pub url: String,
    /// Header names and values. Never logged as a whole: they carry signatures.
    pub headers: Vec<(String, String)>,
    /// The body (empty for GET).
    pub body: Bytes,
}

/// An HTTP response as the transport received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

/// A transport failure: the request got no HTTP response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The request certainly did not reach the server (connection refused,
    /// DNS failure, rejected locally by a rate-limit layer).
    #[error("request not sent: {0}")]
    NotSent(String),
    /// The request may have reached the server but no response came back
    /// (timeout, connection reset mid-flight): the effect is in doubt.
    #[error("no response (request may have been applied): {0}")]
    NoResponse(String),
}

/// Sends one HTTP request and returns its response.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Send `req`.
    async fn send(&self, req: HttpRequest) -> Result<HttpResponse, TransportError>;
}
