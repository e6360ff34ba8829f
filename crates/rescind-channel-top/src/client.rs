//! The TOP gateway client: system parameters, signing, one POST, classification.

use crate::classify::{app_ban, classify_response, classify_transport, maybe_applied};
use crate::config::{GatewayConfig, TransportSettings};
use crate::Error;
use bytes::Bytes;
use rescind_core::{ChannelError, Clock, PermanentReason, TokioClock};
use rescind_wire::flow::{AppKeyLimiter, AppKeyLimiters, FlowError};
use rescind_wire::sign::{top_sign, top_timestamp, Secret};
use rescind_wire::transport::{HttpRequest, Transport};
use serde_json::Value;
use std::sync::Arc;

/// The system parameter names; an API parameter may not reuse one.
pub const SYSTEM_PARAMS: [&str; 11] = [
    "method",
    "app_key",
    "target_app_key",
    "sign_method",
    "sign",
    "session",
    "timestamp",
    "format",
    "v",
    "partner_id",
    "simplify",
];

/// The production transport for a gateway: reqwest (rustls) under the
/// timeout, rate-limit and retry layers, on `clock`
/// ([`rescind_wire::transport::layered_transport`], as every channel builds it).
pub fn layered_transport(
    settings: &TransportSettings,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn Transport>, Error> {
    Ok(rescind_wire::transport::layered_transport(settings, clock)?)
}

/// The transport of a gateway whose pace is kept by its app key's shared
/// limiter: the timeout and retry layers, and no rate layer of its own.
pub fn unpaced_transport(
    settings: &TransportSettings,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn Transport>, Error> {
    let unpaced = TransportSettings {
        rate_per_s: 0.0,
        ..settings.clone()
    };
    layered_transport(&unpaced, clock)
}

/// The shared limiter of `gateway`'s app key in `limiters`, with the
/// gateway's `rate_per_s`, `burst` and `rate_wait_max_ms` (the app key's
/// budget: see [`rescind_wire::flow`]).
pub fn app_key_limiter(gateway: &GatewayConfig, limiters: &AppKeyLimiters) -> Arc<AppKeyLimiter> {
    limiters.limiter(&gateway.url, &gateway.app_key, gateway.transport.flow())
}

/// What every `connect_with` builds on: reqwest with the timeout and retry
/// layers (no rate layer), the system clock, and the app key's limiter from
/// `limiters`.
pub(crate) type PacedParts = (Arc<dyn Transport>, Arc<dyn Clock>, Arc<AppKeyLimiter>);

/// See [`PacedParts`].
pub(crate) fn paced_parts(
    gateway: &GatewayConfig,
    limiters: &AppKeyLimiters,
) -> Result<PacedParts, Error> {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::system());
    let transport = unpaced_transport(&gateway.transport, clock.clone())?;
    Ok((transport, clock, app_key_limiter(gateway, limiters)))
}

/// A refusal of the app key's limiter as the engine sees it: retryable,
/// certainly not applied (nothing was sent), with the ban's remaining wait.
pub fn classify_flow(e: &FlowError) -> ChannelError {
    match e {
        FlowError::Banned { remaining_ms, .. } => ChannelError::rate_limited(
            Some(std::time::Duration::from_millis(*remaining_ms)),
            e.to_string(),
        ),
        FlowError::Busy { .. } => ChannelError::not_applied(e.to_string()),
    }
}

/// A client of one TOP application on one gateway. It signs and sends any
/// method and classifies the answer; the channel types build on it.
///
/// Requests are `POST` `application/x-www-form-urlencoded; charset=utf-8`
/// with every parameter in the body, `format=json`, `v=2.0`, and a GMT+8
/// `timestamp` from the client's [`Clock`].
pub struct TopClient {
    gateway: GatewayConfig,
    transport: Arc<dyn Transport>,
    clock: Arc<dyn Clock>,
    limiter: Option<Arc<AppKeyLimiter>>,
}

impl std::fmt::Debug for TopClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopClient")
            .field("url", &self.gateway.url)
            .field("app_key", &self.gateway.app_key)
            .field("sign_method", &self.gateway.sign_method)
            .finish_non_exhaustive()
    }
}

impl TopClient {
    /// A client sending through `transport` (already layered, or the
    /// simulator's in-process one), with timestamps from `clock`.
    pub fn new(
        gateway: GatewayConfig,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        gateway.validate()?;
        Ok(TopClient {
            gateway,
            transport,
            clock,
            limiter: None,
        })
    }

    /// Pace every call by `limiter` (the app key's, shared with the other
    /// clients of that app key) and let a TOP ban (codes 4–8) pause it.
    pub fn with_limiter(mut self, limiter: Arc<AppKeyLimiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// A client on reqwest with the configured timeout and retry layers, paced
    /// by its app key's limiter in the process-wide registry
    /// ([`AppKeyLimiters::global`]), on the system clock.
    pub fn connect(gateway: GatewayConfig) -> Result<Self, Error> {
        Self::connect_with(gateway, AppKeyLimiters::global())
    }

    /// As [`TopClient::connect`], with the app key's limiter from `limiters`.
    pub fn connect_with(gateway: GatewayConfig, limiters: &AppKeyLimiters) -> Result<Self, Error> {
        let (transport, clock, limiter) = paced_parts(&gateway, limiters)?;
        Ok(Self::new(gateway, transport, clock)?.with_limiter(limiter))
    }

    /// The app key's limiter, when calls are paced by one.
    pub fn limiter(&self) -> Option<&Arc<AppKeyLimiter>> {
        self.limiter.as_ref()
    }

    /// The gateway configuration (secrets print as `***`).
    pub fn gateway(&self) -> &GatewayConfig {
        &self.gateway
    }

    /// The clock timestamps come from.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The signed, sent parameters of a call to `method` (system parameters
    /// included, `sign` last). Empty values are dropped: TOP neither sends
    /// nor signs them. The pairs hold the `session` in clear: never log them.
    pub fn signed_params(
        &self,
        method: &str,
        params: &[(&str, &str)],
    ) -> Result<Vec<(String, String)>, ChannelError> {
        self.signed_params_as(method, params, self.gateway.session.as_ref())
    }

    /// [`TopClient::signed_params`] with `session` instead of the configured
    /// one (`None`: no session, as `taobao.top.auth.token.refresh` is sent).
    pub fn signed_params_as(
        &self,
        method: &str,
        params: &[(&str, &str)],
        session: Option<&Secret>,
    ) -> Result<Vec<(String, String)>, ChannelError> {
        if let Some((name, _)) = params.iter().find(|(k, _)| SYSTEM_PARAMS.contains(k)) {
            return Err(ChannelError::permanent(
                PermanentReason::InvalidRequest,
                format!("API parameter {name:?} collides with a TOP system parameter"),
            ));
        }
        let g = &self.gateway;
        let timestamp = top_timestamp(self.clock.now_ms());
        let mut all: Vec<(String, String)> = vec![
            ("method".into(), method.into()),
            ("app_key".into(), g.app_key.clone()),
            ("sign_method".into(), g.sign_method.as_str().into()),
            ("timestamp".into(), timestamp),
            ("format".into(), "json".into()),
            ("v".into(), "2.0".into()),
        ];
        if let Some(p) = &g.partner_id {
            all.push(("partner_id".into(), p.clone()));
        }
        if let Some(s) = session {
            all.push(("session".into(), s.expose().to_owned()));
        }
        all.extend(
            params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        all.retain(|(_, v)| !v.is_empty());
        let sign = top_sign(
            all.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            None,
            &g.app_secret,
            g.sign_method,
        );
        all.push(("sign".into(), sign));
        Ok(all)
    }

    /// The HTTP request for a call to `method`.
    pub fn build_request(
        &self,
        method: &str,
        params: &[(&str, &str)],
    ) -> Result<HttpRequest, ChannelError> {
        self.build_request_as(method, params, self.gateway.session.as_ref())
    }

    /// [`TopClient::build_request`] with `session` instead of the configured one.
    pub fn build_request_as(
        &self,
        method: &str,
        params: &[(&str, &str)],
        session: Option<&Secret>,
    ) -> Result<HttpRequest, ChannelError> {
        let all = self.signed_params_as(method, params, session)?;
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(all.iter())
            .finish();
        Ok(HttpRequest {
            method: http::Method::POST,
            url: self.gateway.url.clone(),
            headers: vec![(
                "content-type".into(),
                "application/x-www-form-urlencoded; charset=utf-8".into(),
            )],
            body: Bytes::from(body),
        })
    }

    /// Call `method` with API `params`: the value inside
    /// `<method>_response`, or a classified [`ChannelError`] that keeps TOP's
    /// code and sub-code. Business results inside the value are the caller's
    /// to check. Logs name the method and the outcome, never parameters.
    pub async fn call(&self, method: &str, params: &[(&str, &str)]) -> Result<Value, ChannelError> {
        self.call_with_session(method, params, self.gateway.session.as_ref(), None)
            .await
    }

    /// [`TopClient::call`] on behalf of `account` (the saga's account: the
    /// app key's limiter shares its tokens fairly between accounts), with
    /// the configured session. During a ban of the app key nothing is sent:
    /// the answer is a retryable, not-applied error with the ban's remaining
    /// wait, naming the app key. An answer with codes 4–8 bans the app key
    /// for the time it states.
    pub async fn call_as(
        &self,
        method: &str,
        params: &[(&str, &str)],
        account: Option<&str>,
    ) -> Result<Value, ChannelError> {
        self.call_with_session(method, params, self.gateway.session.as_ref(), account)
            .await
    }

    /// [`TopClient::call_as`] with `session` instead of the configured one
    /// (an account's session; `None`: no session, as the token refresh is sent).
    pub async fn call_with_session(
        &self,
        method: &str,
        params: &[(&str, &str)],
        session: Option<&Secret>,
        account: Option<&str>,
    ) -> Result<Value, ChannelError> {
        let req = self.build_request_as(method, params, session)?;
        if let Some(limiter) = &self.limiter {
            if let Err(e) = limiter.acquire(account).await {
                let err = classify_flow(&e);
                tracing::debug!(method, error = %err, "TOP call held back by flow control");
                return Err(err);
            }
        }
        tracing::debug!(
            method,
            app_key = %self.gateway.app_key,
            sign_method = %self.gateway.sign_method,
            "TOP call"
        );
        let resp = match self.transport.send(req).await {
            Ok(r) => r,
            Err(e) => {
                let err = classify_transport(&e);
                tracing::debug!(method, error = %err, "TOP call failed in transport");
                return Err(err);
            }
        };
        tracing::trace!(
            method,
            status = resp.status,
            body_bytes = resp.body.len(),
            "TOP reply"
        );
        match classify_response(resp.status, &resp.body, method) {
            Ok(v) => Ok(v),
            Err(e) => {
                tracing::debug!(method, error = %e, in_doubt = maybe_applied(&e), "TOP call failed");
                if let (Some(limiter), Some(ban)) = (&self.limiter, app_ban(&e)) {
                    limiter.ban_for(ban);
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rescind_wire::sign::SignMethod;

    struct FixedClock(u64);
    #[async_trait::async_trait]
    impl Clock for FixedClock {
        fn now_ms(&self) -> u64 {
            self.0
        }
        async fn sleep(&self, _d: std::time::Duration) {}
    }

    struct Unused;
    #[async_trait::async_trait]
    impl Transport for Unused {
        async fn send(
            &self,
            _req: HttpRequest,
        ) -> Result<rescind_wire::transport::HttpResponse, rescind_wire::transport::TransportError>
        {
            Err(rescind_wire::transport::TransportError::NotSent(
                "unused".into(),
            ))
        }
    }

    /// 2025-11-04 01:00:40 GMT+8, the vectors' timestamp.
    const VECTOR_MS: u64 = 1_762_189_240_000;

    /// CHANNELS.md §1 vectors, read from `tests/data/sign_vectors.txt`. Lines
    /// whose method ends in `!` test the bare signer (no system parameters);
    /// the others go through the client's own request building.
    #[test]
    fn signature_vectors() {
        let data = include_str!("../tests/data/sign_vectors.txt");
        let mut n = 0;
        for line in data
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let cols: Vec<&str> = line.split('|').map(str::trim).collect();
            assert_eq!(cols.len(), 4, "bad vector line {line:?}");
            let (method, secret, params, expected) = (cols[0], cols[1], cols[2], cols[3]);
            let params: Vec<(&str, &str)> = params
                .split(';')
                .map(|kv| {
                    kv.split_once('=')
                        .unwrap_or_else(|| panic!("bad pair {kv:?}"))
                })
                .collect();
            if let Some(bare) = method.strip_suffix('!') {
                let m: SignMethod = bare.parse().unwrap();
                assert_eq!(
                    top_sign(params.iter().copied(), None, &Secret::new(secret), m),
                    expected,
                    "{line}"
                );
            } else {
                let m: SignMethod = method.parse().unwrap();
                let get = |k: &str| {
                    params
                        .iter()
                        .find(|(n, _)| *n == k)
                        .map(|(_, v)| *v)
                        .unwrap()
                };
                let mut g = GatewayConfig::new(
                    "http://127.0.0.1:1/router/rest",
                    get("app_key"),
                    Secret::new(secret),
                );
                g.sign_method = m;
                g.partner_id = Some(get("partner_id").into());
                let client =
                    TopClient::new(g, Arc::new(Unused), Arc::new(FixedClock(VECTOR_MS))).unwrap();
                assert_eq!(top_timestamp(VECTOR_MS), get("timestamp"));
                let api: Vec<(&str, &str)> = params
                    .iter()
                    .copied()
                    .filter(|(k, _)| !SYSTEM_PARAMS.contains(k))
                    .collect();
                let sent = client.signed_params(get("method"), &api).unwrap();
                let sign = sent
                    .iter()
                    .find(|(k, _)| k == "sign")
                    .map(|(_, v)| v.as_str());
                assert_eq!(sign, Some(expected), "{line}");
                // Exactly the vector's parameters (plus sign_method and sign) are sent.
                assert_eq!(sent.len(), params.len() + 2, "{sent:?}");
                // The body decodes back to the same pairs.
                let req = client.build_request(get("method"), &api).unwrap();
                let decoded: Vec<(String, String)> =
                    form_urlencoded::parse(&req.body).into_owned().collect();
                assert_eq!(decoded, sent);
            }
            n += 1;
        }
        assert_eq!(n, 4, "every vector ran");
    }

    #[test]
    fn empty_values_are_neither_sent_nor_signed_and_collisions_are_refused() {
        let mut g = GatewayConfig::new("http://x/router/rest", "k", Secret::new("s"));
        g.session = Some(Secret::new("sess"));
        let client = TopClient::new(g, Arc::new(Unused), Arc::new(FixedClock(VECTOR_MS))).unwrap();
        let sent = client.signed_params("m", &[("a", ""), ("b", "1")]).unwrap();
        assert!(sent.iter().all(|(k, _)| k != "a"));
        assert!(sent.iter().any(|(k, v)| k == "session" && v == "sess"));
        let e = client.signed_params("m", &[("sign", "x")]).unwrap_err();
        assert!(e.message.contains("collides"), "{e}");
    }
}
