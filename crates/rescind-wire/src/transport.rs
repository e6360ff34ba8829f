//! The HTTP transport seam.
//!
//! Channel clients build and parse requests themselves and send them through
//! a [`Transport`]: reqwest in production; in deterministic simulation the
//! simulator's router called in-process, so the same signing, envelope and
//! classification code runs with no sockets and no real time.

use async_trait::async_trait;
use bytes::Bytes;

/// An HTTP request as a channel client builds it.
///
/// Its `Debug` shows the method, the URL without its query, the header names
/// and the body's size only: bodies and headers carry signatures, sessions and
/// (Damai) the supplier secret.
#[derive(Clone, PartialEq, Eq)]
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

impl std::fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.url.split(['?', '#']).next().unwrap_or("");
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("url", &path)
            .field("headers", &names)
            .field("body_bytes", &self.body.len())
            .finish()
    }
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

// ---------------------------------------------------------------------------
// Production transport: reqwest with rustls.
// ---------------------------------------------------------------------------

use rescind_core::Clock;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Timeouts of the production transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReqwestSettings {
    /// Longest a TCP + TLS connect may take; past it the request was not sent.
    pub connect_timeout_ms: u64,
    /// Longest a whole request may take, connect included; past it the
    /// request is in doubt.
    pub request_timeout_ms: u64,
}

impl Default for ReqwestSettings {
    fn default() -> Self {
        ReqwestSettings {
            connect_timeout_ms: 3_000,
            request_timeout_ms: 10_000,
        }
    }
}

/// The production [`Transport`]: a `reqwest::Client` on rustls.
///
/// Failures map onto what the engine must know: a failure to connect is
/// [`TransportError::NotSent`] (nothing reached the server); a timeout or a
/// connection dropped after the request went out is
/// [`TransportError::NoResponse`] (in doubt). Error texts never carry the URL,
/// headers or body.
#[derive(Clone, Debug)]
pub struct ReqwestTransport {
    client: reqwest::Client,
}

impl ReqwestTransport {
    /// A transport with these timeouts.
    pub fn new(settings: ReqwestSettings) -> Result<Self, TransportError> {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms.max(1)))
            .timeout(Duration::from_millis(settings.request_timeout_ms.max(1)))
            .build()
            .map_err(|e| {
                TransportError::NotSent(format!(
                    "cannot build the HTTP client: {}",
                    e.without_url()
                ))
            })?;
        Ok(ReqwestTransport { client })
    }

    /// Wrap an existing client (its own timeouts and TLS settings apply).
    pub fn from_client(client: reqwest::Client) -> Self {
        ReqwestTransport { client }
    }
}

/// Map a reqwest error onto the transport's two failure kinds. The message
/// names where the request went (scheme, host, port and path: never the
/// query string, where some channels carry signed parameters, nor any user
/// info) and the root cause (`Connection refused (os error 111)`), which
/// reqwest's own message leaves to its source chain.
fn map_reqwest_error(e: reqwest::Error, url: &str) -> TransportError {
    // A connect timeout is both `is_connect` and `is_timeout`: nothing was sent.
    let not_sent = e.is_connect() || e.is_builder();
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        source = cause.source();
    }
    let text = format!("{} ({text})", where_to(url));
    if not_sent {
        TransportError::NotSent(text)
    } else {
        TransportError::NoResponse(text)
    }
}

/// `scheme://host:port/path` of a URL: no user info, no query, no fragment.
fn where_to(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default(),
            u.path()
        ),
        Err(_) => "an unparsable URL".to_owned(),
    }
}

#[async_trait]
impl Transport for ReqwestTransport {
    async fn send(&self, req: HttpRequest) -> Result<HttpResponse, TransportError> {
        let mut builder = self.client.request(req.method, &req.url);
        for (name, value) in &req.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let resp = builder
            .body(req.body)
            .send()
            .await
            .map_err(|e| map_reqwest_error(e, &req.url))?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        // The status line arrived, so the request was delivered; a body cut
        // short leaves its effect in doubt.
        let body = resp.bytes().await.map_err(|e| {
            TransportError::NoResponse(format!("reading the response body: {}", e.without_url()))
        })?;
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

// ---------------------------------------------------------------------------
// Layers: timeout, rate limit, retry. Each wraps an `Arc<dyn Transport>` and is
// one itself, so they compose in any order (tower's `Layer`, without generics
// across the crate boundary).
// ---------------------------------------------------------------------------

/// Wraps a transport in another (tower's `Layer`, over trait objects).
pub trait Layer {
    /// Wrap `inner`.
    fn layer(&self, inner: Arc<dyn Transport>) -> Arc<dyn Transport>;
}

/// Fails a request that got no response within a deadline, as
/// [`TransportError::NoResponse`] (in doubt). Time comes from a [`Clock`], so
/// the deadline runs on tokio's paused clock in tests.
pub struct Timeout {
    inner: Arc<dyn Transport>,
    clock: Arc<dyn Clock>,
    timeout_ms: u64,
}

impl Timeout {
    /// Give every request through `inner` at most `timeout_ms`.
    pub fn new(inner: Arc<dyn Transport>, clock: Arc<dyn Clock>, timeout_ms: u64) -> Self {
        Timeout {
            inner,
            clock,
            timeout_ms,
        }
    }
}

impl std::fmt::Debug for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeout")
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Transport for Timeout {
    async fn send(&self, req: HttpRequest) -> Result<HttpResponse, TransportError> {
        let ms = self.timeout_ms;
        tokio::select! {
            biased;
            r = self.inner.send(req) => r,
            _ = self.clock.sleep(Duration::from_millis(ms)) => {
                tracing::debug!(timeout_ms = ms, "request timed out");
                Err(TransportError::NoResponse(format!("no response within {ms} ms")))
            }
        }
    }
}

/// A client-side token bucket, so one client never exceeds the rate its
/// channel grants (TOP bans an app that does, for seconds to hours).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimitSettings {
    /// Sustained requests per second (> 0).
    pub rate_per_sec: f64,
    /// Requests that may go out at once after a quiet spell (≥ 1).
    pub burst: u32,
    /// Longest a request waits for a token; past it the request is refused
    /// locally as [`TransportError::NotSent`] instead of queueing without end.
    pub wait_max_ms: u64,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            rate_per_sec: 20.0,
            burst: 20,
            wait_max_ms: 30_000,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    /// Tokens available; negative when requests have reserved future tokens.
    tokens: f64,
    last_ms: u64,
}

/// The token-bucket layer: each request takes one token, waiting (on the
/// [`Clock`]) for it when the bucket is empty. Waiters reserve tokens in
/// arrival order, so a burst of callers is spread out, not stampeded.
pub struct RateLimit {
    inner: Arc<dyn Transport>,
    clock: Arc<dyn Clock>,
    settings: RateLimitSettings,
    bucket: Mutex<Bucket>,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RateLimit {
    /// Limit requests through `inner`. A non-positive or non-finite rate
    /// disables the limit; a burst of 0 counts as 1.
    pub fn new(
        inner: Arc<dyn Transport>,
        clock: Arc<dyn Clock>,
        settings: RateLimitSettings,
    ) -> Self {
        let burst = f64::from(settings.burst.max(1));
        let last_ms = clock.now_ms();
        RateLimit {
            inner,
            clock,
            settings,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                last_ms,
            }),
        }
    }

    /// Reserve one token; how long to wait for it, or `None` when the wait
    /// would exceed the limit (nothing is reserved then).
    fn reserve(&self) -> Option<Duration> {
        let rate = self.settings.rate_per_sec;
        if !(rate.is_finite() && rate > 0.0) {
            return Some(Duration::ZERO);
        }
        let burst = f64::from(self.settings.burst.max(1));
        let now = self.clock.now_ms();
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed_s = now.saturating_sub(b.last_ms) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed_s * rate).min(burst);
        b.last_ms = b.last_ms.max(now);
        let after = b.tokens - 1.0;
        let wait_ms = if after >= 0.0 {
            0.0
        } else {
            (-after / rate * 1000.0).ceil()
        };
        if wait_ms > self.settings.wait_max_ms as f64 {
            return None;
        }
        b.tokens = after;
        Some(Duration::from_millis(wait_ms as u64))
    }
}

#[async_trait]
impl Transport for RateLimit {
    async fn send(&self, req: HttpRequest) -> Result<HttpResponse, TransportError> {
        match self.reserve() {
            Some(wait) => {
                if !wait.is_zero() {
                    tracing::trace!(
                        wait_ms = wait.as_millis() as u64,
                        "rate limit: waiting for a token"
                    );
                    self.clock.sleep(wait).await;
                }
                self.inner.send(req).await
            }
            None => Err(TransportError::NotSent(format!(
                "client-side rate limit: no token within {} ms",
                self.settings.wait_max_ms
            ))),
        }
    }
}

/// How the retry layer retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetrySettings {
    /// Sends per request, the first included (≥ 1).
    pub attempts_max: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff_initial_ms: u64,
    /// Ceiling of that wait.
    pub backoff_max_ms: u64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            attempts_max: 3,
            backoff_initial_ms: 50,
            backoff_max_ms: 1_000,
        }
    }
}

/// Retries requests that certainly were **not sent**
/// ([`TransportError::NotSent`]: connection refused, local rate limit), a
/// bounded number of times with a small back-off. It never re-sends a request
/// that may have reached the server ([`TransportError::NoResponse`]) nor one
/// that got any HTTP response: those are the engine's to resolve, by lookup.
pub struct Retry {
    inner: Arc<dyn Transport>,
    clock: Arc<dyn Clock>,
    settings: RetrySettings,
}

impl std::fmt::Debug for Retry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Retry {
    /// Retry not-sent requests through `inner`.
    pub fn new(inner: Arc<dyn Transport>, clock: Arc<dyn Clock>, settings: RetrySettings) -> Self {
        Retry {
            inner,
            clock,
            settings,
        }
    }
}

#[async_trait]
impl Transport for Retry {
    async fn send(&self, req: HttpRequest) -> Result<HttpResponse, TransportError> {
        let attempts_max = self.settings.attempts_max.max(1);
        let mut attempt = 1u32;
        loop {
            match self.inner.send(req.clone()).await {
                Err(TransportError::NotSent(why)) if attempt < attempts_max => {
                    let backoff = self
                        .settings
                        .backoff_initial_ms
                        .saturating_mul(1u64 << (attempt - 1).min(20))
                        .min(self.settings.backoff_max_ms);
                    tracing::debug!(attempt, backoff_ms = backoff, reason = %why, "request not sent; retrying");
                    self.clock.sleep(Duration::from_millis(backoff)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// Layer form of [`Timeout`].
#[derive(Clone)]
pub struct TimeoutLayer {
    /// The clock the deadline runs on.
    pub clock: Arc<dyn Clock>,
    /// The deadline.
    pub timeout_ms: u64,
}

impl Layer for TimeoutLayer {
    fn layer(&self, inner: Arc<dyn Transport>) -> Arc<dyn Transport> {
        Arc::new(Timeout::new(inner, self.clock.clone(), self.timeout_ms))
    }
}

/// Layer form of [`RateLimit`]. Each call to `layer` makes a fresh bucket.
#[derive(Clone)]
pub struct RateLimitLayer {
    /// The clock waits run on.
    pub clock: Arc<dyn Clock>,
    /// The bucket's settings.
    pub settings: RateLimitSettings,
}

impl Layer for RateLimitLayer {
    fn layer(&self, inner: Arc<dyn Transport>) -> Arc<dyn Transport> {
        Arc::new(RateLimit::new(inner, self.clock.clone(), self.settings))
    }
}

/// Layer form of [`Retry`].
#[derive(Clone)]
pub struct RetryLayer {
    /// The clock back-offs run on.
    pub clock: Arc<dyn Clock>,
    /// The retry settings.
    pub settings: RetrySettings,
}

impl Layer for RetryLayer {
    fn layer(&self, inner: Arc<dyn Transport>) -> Arc<dyn Transport> {
        Arc::new(Retry::new(inner, self.clock.clone(), self.settings))
    }
}

/// Builds a transport wrapped in layers; each call wraps what is built so
/// far, so the **last** layer added is the outermost.
///
/// ```
/// use rescind_core::TokioClock;
/// use rescind_wire::transport::*;
/// use std::sync::Arc;
///
/// let clock: Arc<dyn rescind_core::Clock> = Arc::new(TokioClock::system());
/// let inner = ReqwestTransport::new(ReqwestSettings::default()).unwrap();
/// // retry(not sent) → rate limit → timeout → reqwest
/// let transport = TransportStack::new(Arc::new(inner))
///     .timeout(clock.clone(), 10_000)
///     .rate_limit(clock.clone(), RateLimitSettings::default())
///     .retry(clock, RetrySettings::default())
///     .build();
/// # let _ = transport;
/// ```
pub struct TransportStack {
    inner: Arc<dyn Transport>,
}

impl std::fmt::Debug for TransportStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportStack").finish_non_exhaustive()
    }
}

impl TransportStack {
    /// Start from `inner`.
    pub fn new(inner: Arc<dyn Transport>) -> Self {
        TransportStack { inner }
    }
    /// Wrap in any [`Layer`].
    pub fn layer(self, layer: &dyn Layer) -> Self {
        TransportStack {
            inner: layer.layer(self.inner),
        }
    }
    /// Wrap in a [`Timeout`].
    pub fn timeout(self, clock: Arc<dyn Clock>, timeout_ms: u64) -> Self {
        self.layer(&TimeoutLayer { clock, timeout_ms })
    }
    /// Wrap in a [`RateLimit`].
    pub fn rate_limit(self, clock: Arc<dyn Clock>, settings: RateLimitSettings) -> Self {
        self.layer(&RateLimitLayer { clock, settings })
    }
    /// Wrap in a [`Retry`].
    pub fn retry(self, clock: Arc<dyn Clock>, settings: RetrySettings) -> Self {
        self.layer(&RetryLayer { clock, settings })
    }
    /// The finished transport.
    pub fn build(self) -> Arc<dyn Transport> {
        self.inner
    }
}

// ---------------------------------------------------------------------------
// One set of settings for the whole stack, as every channel's configuration
// embeds it (`[channels.NAME.transport]`, `[channels.NAME.gateway.transport]`).
// ---------------------------------------------------------------------------

/// The transport under one channel: reqwest's timeouts, the client-side rate
/// limit and the retry of requests that were certainly not sent. Every
/// channel crate embeds this one struct, so every channel's configuration
/// uses the same keys (TOML, unknown keys refused, every key optional):
///
/// | key | default | meaning |
/// |---|---|---|
/// | `connect_timeout_ms` | 3000 | longest a TCP + TLS connect may take (past it: not sent) |
/// | `timeout_ms` | 10000 | longest a whole request may take (past it: in doubt) |
/// | `rate_per_s` | 20.0 | requests per second sent at most; 0 disables the limit |
/// | `burst` | 20 | requests that may go at once after a quiet spell |
/// | `rate_wait_max_ms` | 30000 | longest wait for a token; past it the request is refused locally (not sent) |
/// | `retry_attempts_max` | 3 | sends of a request that was certainly not sent (connect refused), the first included |
/// | `retry_backoff_initial_ms` | 50 | wait before the first such re-send; doubled for each further one |
/// | `retry_backoff_max_ms` | 1000 | ceiling of that wait |
///
/// Earlier names are still read as aliases: `request_timeout_ms` for
/// `timeout_ms`, `rate_per_sec` for `rate_per_s`, `rate_burst` for `burst`.
///
/// ```
/// use rescind_wire::transport::TransportSettings;
///
/// let t: TransportSettings = toml::from_str("timeout_ms = 5000\nrate_per_s = 5.0").unwrap();
/// assert_eq!(t.timeout_ms, 5_000);
/// assert_eq!(t.burst, 20);
/// t.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportSettings {
    /// Longest a TCP + TLS connect may take, in ms; past it the request was
    /// not sent. Default 3000.
    pub connect_timeout_ms: u64,
    /// Longest one request may take, connect included, in ms; past it the
    /// request is in doubt. Default 10000. (Alias: `request_timeout_ms`.)
    #[serde(alias = "request_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests per second this client sends at most; 0 disables the limit.
    /// Default 20. (Alias: `rate_per_sec`.)
    #[serde(alias = "rate_per_sec")]
    pub rate_per_s: f64,
    /// Requests that may go at once after a quiet spell (0 counts as 1).
    /// Default 20. (Alias: `rate_burst`.)
    #[serde(alias = "rate_burst")]
    pub burst: u32,
    /// Longest a request waits for the rate limiter, in ms, before it is
    /// refused locally (not sent). Default 30000.
    pub rate_wait_max_ms: u64,
    /// Sends per request that could not be sent (connect refused, local rate
    /// limit), the first included (0 counts as 1). Default 3.
    pub retry_attempts_max: u32,
    /// First back-off between such sends, in ms. Default 50.
    pub retry_backoff_initial_ms: u64,
    /// Back-off ceiling, in ms. Default 1000.
    pub retry_backoff_max_ms: u64,
}

impl Default for TransportSettings {
    fn default() -> Self {
        let r = ReqwestSettings::default();
        let l = RateLimitSettings::default();
        let t = RetrySettings::default();
        TransportSettings {
            connect_timeout_ms: r.connect_timeout_ms,
            timeout_ms: r.request_timeout_ms,
            rate_per_s: l.rate_per_sec,
            burst: l.burst,
            rate_wait_max_ms: l.wait_max_ms,
            retry_attempts_max: t.attempts_max,
            retry_backoff_initial_ms: t.backoff_initial_ms,
            retry_backoff_max_ms: t.backoff_max_ms,
        }
    }
}

/// A [`TransportSettings`] value that cannot work: the key and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct TransportSettingsError {
    /// The key, e.g. `timeout_ms`.
    pub key: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl TransportSettings {
    /// Check the values: both timeouts positive, the rate finite and not negative.
    pub fn validate(&self) -> Result<(), TransportSettingsError> {
        let bad = |key, reason| Err(TransportSettingsError { key, reason });
        if self.connect_timeout_ms == 0 {
            return bad("connect_timeout_ms", "must be > 0");
        }
        if self.timeout_ms == 0 {
            return bad("timeout_ms", "must be > 0");
        }
        if !(self.rate_per_s.is_finite() && self.rate_per_s >= 0.0) {
            return bad("rate_per_s", "must be a number >= 0 (0 disables the limit)");
        }
        Ok(())
    }
    /// The reqwest timeouts.
    pub fn reqwest(&self) -> ReqwestSettings {
        ReqwestSettings {
            connect_timeout_ms: self.connect_timeout_ms,
            request_timeout_ms: self.timeout_ms,
        }
    }
    /// The rate-limit layer's settings.
    pub fn rate_limit(&self) -> RateLimitSettings {
        RateLimitSettings {
            rate_per_sec: self.rate_per_s,
            burst: self.burst,
            wait_max_ms: self.rate_wait_max_ms,
        }
    }
    /// The budget of the TOP app key this transport serves, when its pace is
    /// kept by the app key's shared limiter ([`crate::flow`]): `rate_per_s`,
    /// `burst` and `rate_wait_max_ms`.
    pub fn flow(&self) -> crate::flow::FlowSettings {
        crate::flow::FlowSettings {
            rate_per_s: self.rate_per_s,
            burst: self.burst,
            wait_max_ms: self.rate_wait_max_ms,
        }
    }
    /// The retry layer's settings.
    pub fn retry(&self) -> RetrySettings {
        RetrySettings {
            attempts_max: self.retry_attempts_max,
            backoff_initial_ms: self.retry_backoff_initial_ms,
            backoff_max_ms: self.retry_backoff_max_ms,
        }
    }
}

/// Stack the layers these settings describe on `inner`, on `clock`:
/// retry(not sent) → rate limit → timeout → `inner` (retry outermost).
/// The one place a channel's transport layers are put together.
pub fn stack_layers(
    inner: Arc<dyn Transport>,
    settings: &TransportSettings,
    clock: Arc<dyn Clock>,
) -> Arc<dyn Transport> {
    TransportStack::new(inner)
        .timeout(clock.clone(), settings.timeout_ms)
        .rate_limit(clock.clone(), settings.rate_limit())
        .retry(clock, settings.retry())
        .build()
}

/// The production transport of a channel: a [`ReqwestTransport`] with the
/// settings' timeouts under [`stack_layers`].
pub fn layered_transport(
    settings: &TransportSettings,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn Transport>, TransportError> {
    let inner = ReqwestTransport::new(settings.reqwest())?;
    Ok(stack_layers(Arc::new(inner), settings, clock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_names_the_url_and_the_cause_but_not_the_query() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let t = ReqwestTransport::new(ReqwestSettings::default()).expect("client");
        let err = t
            .send(HttpRequest {
                method: http::Method::POST,
                url: format!("http://user:pw@127.0.0.1:{port}/router/rest?sign=SECRETSIGN"),
                headers: vec![],
                body: Bytes::new(),
            })
            .await
            .expect_err("nothing listens there");
        let TransportError::NotSent(text) = &err else {
            panic!("a refused connection was certainly not sent: {err:?}");
        };
        assert!(
            text.contains(&format!("http://127.0.0.1:{port}/router/rest")),
            "names the URL: {text}"
        );
        assert!(
            text.to_ascii_lowercase().contains("connection refused"),
            "names the cause: {text}"
        );
        assert!(
            !text.contains("SECRETSIGN") && !text.contains("pw@"),
            "{text}"
        );
    }
    use rescind_core::TokioClock;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// What the scripted transport does for one request.
    enum Step {
        Reply(u16),
        Fail(TransportError),
        /// Answer after this long (on tokio's clock).
        Slow(u64),
    }

    /// A transport that plays a script and records when each request came.
    struct Scripted {
        script: Mutex<VecDeque<Step>>,
        sent_at_ms: Mutex<Vec<u64>>,
        clock: Arc<dyn Clock>,
        calls: AtomicU32,
    }

    impl Scripted {
        fn new(clock: Arc<dyn Clock>, steps: Vec<Step>) -> Arc<Self> {
            Arc::new(Scripted {
                script: Mutex::new(steps.into()),
                sent_at_ms: Mutex::new(Vec::new()),
                clock,
                calls: AtomicU32::new(0),
            })
        }
        fn calls(&self) -> u32 {
            self.calls.load(Ordering::SeqCst)
        }
        fn times(&self) -> Vec<u64> {
            self.sent_at_ms.lock().unwrap().clone()
        }
    }

    fn ok(status: u16) -> HttpResponse {
        HttpResponse {
            status,
            headers: vec![],
            body: Bytes::from_static(b"{}"),
        }
    }

    #[async_trait]
    impl Transport for Scripted {
        async fn send(&self, _req: HttpRequest) -> Result<HttpResponse, TransportError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.sent_at_ms.lock().unwrap().push(self.clock.now_ms());
            let step = self.script.lock().unwrap().pop_front();
            match step {
                Some(Step::Reply(s)) => Ok(ok(s)),
                None => Ok(ok(200)),
                Some(Step::Fail(e)) => Err(e),
                Some(Step::Slow(ms)) => {
                    self.clock.sleep(Duration::from_millis(ms)).await;
                    Ok(ok(200))
                }
            }
        }
    }

    fn req() -> HttpRequest {
        HttpRequest {
            method: http::Method::POST,
            url: "http://127.0.0.1:1/router/rest".into(),
            headers: vec![],
            body: Bytes::from_static(b"a=b"),
        }
    }

    fn clock() -> Arc<dyn Clock> {
        Arc::new(TokioClock::with_base(1_000_000))
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_turns_a_slow_reply_into_no_response() {
        let c = clock();
        let inner = Scripted::new(c.clone(), vec![Step::Slow(5_000), Step::Slow(10)]);
        let t = TransportStack::new(inner.clone())
            .timeout(c.clone(), 1_000)
            .build();
        let t0 = c.now_ms();
        let e = t.send(req()).await.unwrap_err();
        assert!(matches!(e, TransportError::NoResponse(_)), "{e:?}");
        assert_eq!(c.now_ms() - t0, 1_000);
        assert_eq!(t.send(req()).await.unwrap().status, 200);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_resends_only_not_sent() {
        let c = clock();
        let inner = Scripted::new(
            c.clone(),
            vec![
                Step::Fail(TransportError::NotSent("refused".into())),
                Step::Fail(TransportError::NotSent("refused".into())),
                Step::Reply(200),
            ],
        );
        let settings = RetrySettings {
            attempts_max: 3,
            backoff_initial_ms: 100,
            backoff_max_ms: 150,
        };
        let t = TransportStack::new(inner.clone())
            .retry(c.clone(), settings)
            .build();
        assert_eq!(t.send(req()).await.unwrap().status, 200);
        assert_eq!(inner.calls(), 3);
        let times = inner.times();
        assert_eq!(times[1] - times[0], 100);
        assert_eq!(times[2] - times[1], 150, "back-off is capped");

        // In doubt: never re-sent.
        let inner = Scripted::new(
            c.clone(),
            vec![Step::Fail(TransportError::NoResponse("reset".into()))],
        );
        let t = TransportStack::new(inner.clone())
            .retry(c.clone(), settings)
            .build();
        assert!(matches!(
            t.send(req()).await,
            Err(TransportError::NoResponse(_))
        ));
        assert_eq!(inner.calls(), 1);

        // An HTTP error reply is a reply: never re-sent by the layer.
        let inner = Scripted::new(c.clone(), vec![Step::Reply(503)]);
        let t = TransportStack::new(inner.clone())
            .retry(c.clone(), settings)
            .build();
        assert_eq!(t.send(req()).await.unwrap().status, 503);
        assert_eq!(inner.calls(), 1);

        // Bounded: gives up after attempts_max with the last error.
        let inner = Scripted::new(
            c.clone(),
            (0..5)
                .map(|_| Step::Fail(TransportError::NotSent("refused".into())))
                .collect(),
        );
        let t = TransportStack::new(inner.clone())
            .retry(c.clone(), settings)
            .build();
        assert!(matches!(
            t.send(req()).await,
            Err(TransportError::NotSent(_))
        ));
        assert_eq!(inner.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_spreads_requests_after_the_burst() {
        let c = clock();
        let inner = Scripted::new(c.clone(), vec![]);
        let settings = RateLimitSettings {
            rate_per_sec: 10.0,
            burst: 2,
            wait_max_ms: 10_000,
        };
        let t = TransportStack::new(inner.clone())
            .rate_limit(c.clone(), settings)
            .build();
        let t0 = c.now_ms();
        let mut handles = Vec::new();
        for _ in 0..5 {
            let t = t.clone();
            handles.push(tokio::spawn(async move { t.send(req()).await }));
        }
        for h in handles {
            assert_eq!(h.await.unwrap().unwrap().status, 200);
        }
        let mut rel: Vec<u64> = inner.times().iter().map(|t| t - t0).collect();
        rel.sort();
        assert_eq!(rel, vec![0, 0, 100, 200, 300]);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_refuses_rather_than_wait_past_the_limit() {
        let c = clock();
        let inner = Scripted::new(c.clone(), vec![]);
        let settings = RateLimitSettings {
            rate_per_sec: 1.0,
            burst: 1,
            wait_max_ms: 500,
        };
        let t = TransportStack::new(inner.clone())
            .rate_limit(c.clone(), settings)
            .build();
        assert!(t.send(req()).await.is_ok());
        assert!(matches!(
            t.send(req()).await,
            Err(TransportError::NotSent(_))
        ));
        assert_eq!(inner.calls(), 1);
        // The refused request reserved nothing: after a second the next goes.
        c.sleep(Duration::from_secs(1)).await;
        assert!(t.send(req()).await.is_ok());
        assert_eq!(inner.calls(), 2);
    }

    #[test]
    fn settings_parse_with_defaults_aliases_and_no_unknown_keys() {
        let t: TransportSettings = toml::from_str("").unwrap();
        assert_eq!(t, TransportSettings::default());
        assert_eq!(t.reqwest(), ReqwestSettings::default());
        assert_eq!(t.rate_limit(), RateLimitSettings::default());
        assert_eq!(t.retry(), RetrySettings::default());
        let t: TransportSettings =
            toml::from_str("timeout_ms = 500\nrate_per_s = 2.5\nburst = 3\nretry_attempts_max = 1")
                .unwrap();
        assert_eq!(
            (t.timeout_ms, t.rate_per_s, t.burst, t.retry_attempts_max),
            (500, 2.5, 3, 1)
        );
        // The names of earlier releases still read.
        let old: TransportSettings =
            toml::from_str("request_timeout_ms = 500\nrate_per_sec = 2.5\nrate_burst = 3").unwrap();
        assert_eq!((old.timeout_ms, old.rate_per_s, old.burst), (500, 2.5, 3));
        let e = toml::from_str::<TransportSettings>("timeout = 5").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        t.validate().unwrap();
        let zero = TransportSettings {
            timeout_ms: 0,
            ..TransportSettings::default()
        };
        assert_eq!(zero.validate().unwrap_err().key, "timeout_ms");
        let neg = TransportSettings {
            rate_per_s: -1.0,
            ..TransportSettings::default()
        };
        assert_eq!(neg.validate().unwrap_err().key, "rate_per_s");
    }

    #[tokio::test(start_paused = true)]
    async fn stack_layers_applies_timeout_rate_limit_and_retry() {
        let c = clock();
        let settings = TransportSettings {
            timeout_ms: 1_000,
            rate_per_s: 10.0,
            burst: 1,
            retry_attempts_max: 2,
            retry_backoff_initial_ms: 100,
            ..TransportSettings::default()
        };
        let inner = Scripted::new(
            c.clone(),
            vec![
                Step::Fail(TransportError::NotSent("refused".into())),
                Step::Reply(200),
                Step::Slow(5_000),
            ],
        );
        let t = stack_layers(inner.clone(), &settings, c.clone());
        let t0 = c.now_ms();
        assert_eq!(t.send(req()).await.unwrap().status, 200);
        // Re-sent once, 100 ms later, through the rate limiter (a token had refilled).
        let rel: Vec<u64> = inner.times().iter().map(|t| t - t0).collect();
        assert_eq!(rel, vec![0, 100]);
        let e = t.send(req()).await.unwrap_err();
        assert!(matches!(e, TransportError::NoResponse(_)), "{e:?}");
        assert_eq!(inner.calls(), 3, "an in-doubt request is never re-sent");
    }

    #[test]
    fn request_debug_hides_body_headers_and_query() {
        let r = HttpRequest {
            method: http::Method::POST,
            url: "http://h/router/rest?session=s3cr3t-q".into(),
            headers: vec![("signature".into(), "s3cr3t-h".into())],
            body: Bytes::from_static(b"supplier_secret=s3cr3t-b"),
        };
        let d = format!("{r:?}");
        assert!(!d.contains("s3cr3t"), "{d}");
        assert!(
            d.contains("http://h/router/rest") && d.contains("signature") && d.contains("24"),
            "{d}"
        );
    }

    #[tokio::test]
    async fn reqwest_connect_refused_is_not_sent() {
        // Bind then drop a listener: the port is very likely closed now.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let t = ReqwestTransport::new(ReqwestSettings::default()).unwrap();
        let mut r = req();
        r.url = format!("http://127.0.0.1:{port}/router/rest?secret=s3cr3t");
        let e = t.send(r).await.unwrap_err();
        assert!(matches!(e, TransportError::NotSent(_)), "{e:?}");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
    }

    #[tokio::test]
    async fn reqwest_timeout_after_sending_is_no_response() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            // Read the request, never answer.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let t = ReqwestTransport::new(ReqwestSettings {
            connect_timeout_ms: 1_000,
            request_timeout_ms: 300,
        })
        .unwrap();
        let mut r = req();
        r.url = format!("http://{addr}/router/rest");
        let e = t.send(r).await.unwrap_err();
        assert!(matches!(e, TransportError::NoResponse(_)), "{e:?}");
        server.abort();
    }
}
