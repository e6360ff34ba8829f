//! Fault injection: per-endpoint latency, error rates, permanent and
//! authentication failures, and lost responses.
//!
//! A [`FaultProfile`] maps endpoint names (TOP method names, `pandapon.*`
//! names, or `default`) to a [`FaultSpec`]. An endpoint's own entry replaces
//! the `default` entry entirely (no merging). Every draw comes from the
//! simulator's seeded [`rescind_core::SplitMix64`].
//!
//! Both gateways inject faults through one seam, [`guard`]: it draws the
//! decision, sleeps the latency, answers a refusal (in the gateway's own
//! envelope, through [`FaultReplies`]) or applies the request and loses its
//! answer. Only the wording of a refusal is per gateway.

use crate::http_util;
use crate::Sim;
use axum::response::Response;
use rescind_core::Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Endpoint names of the PandaPon routes, as used in fault profiles and the
/// effect log.
pub mod endpoints {
    /// `GET /v2/taobao/order/refund/cancel/{refundId}`.
    pub const TAOBAO_REFUND_CANCEL: &str = "pandapon.taobao.refund.cancel";
    /// `POST /v2/alibaba/order/cancel`.
    pub const ALIBABA_ORDER_CANCEL: &str = "pandapon.1688.order.cancel";
    /// `POST /v2/taobao/order/cancel`.
    pub const TAOBAO_ORDER_CANCEL: &str = "pandapon.taobao.order.cancel";
    /// `POST /v2/taobao/order/refund/submit`.
    pub const TAOBAO_REFUND_SUBMIT: &str = "pandapon.taobao.refund.submit";
    /// `GET /v2/taobao/order/detail/{orderId}`.
    pub const TAOBAO_ORDER_DETAIL: &str = "pandapon.taobao.order.detail";
    /// `GET /v2/taobao/order/refund/detail/{refundId}`.
    pub const TAOBAO_REFUND_DETAIL: &str = "pandapon.taobao.refund.detail";
    /// `GET /v2/alibaba/order/detail/{orderId}`.
    pub const ALIBABA_ORDER_DETAIL: &str = "pandapon.1688.order.detail";
    /// `GET /v2/alibaba/refund/detail/{refundId}`.
    pub const ALIBABA_REFUND_DETAIL: &str = "pandapon.1688.refund.detail";
}

/// The profile key that applies to every endpoint without its own entry.
pub const DEFAULT_KEY: &str = "default";

/// Faults for every endpoint: `{"default": {...}, "tmall.tbc.order.cancel": {...}}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FaultProfile {
    /// Endpoint name (or `default`) → its faults.
    pub endpoints: BTreeMap<String, FaultSpec>,
}

impl FaultProfile {
    /// No faults anywhere.
    pub fn none() -> Self {
        FaultProfile::default()
    }

    /// The same faults for every endpoint.
    pub fn everywhere(spec: FaultSpec) -> Self {
        FaultProfile::default().with(DEFAULT_KEY, spec)
    }

    /// Add (or replace) one endpoint's faults.
    pub fn with(mut self, endpoint: impl Into<String>, spec: FaultSpec) -> Self {
        self.endpoints.insert(endpoint.into(), spec);
        self
    }

    /// The spec that applies to `endpoint`.
    pub fn spec_for(&self, endpoint: &str) -> Option<&FaultSpec> {
        self.endpoints
            .get(endpoint)
            .or_else(|| self.endpoints.get(DEFAULT_KEY))
    }

    /// Parse a profile from JSON.
    pub fn from_json(s: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(s)
    }
}

/// What happens to a lost response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LostResponseMode {
    /// The connection is closed without a (complete) response.
    #[default]
    Drop,
    /// An HTTP 504 from the "gateway", body-less as proxies send it.
    GatewayTimeout,
}

/// One injected fault kind, for [`FaultSpec::script`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// No fault for this request.
    None,
    /// HTTP 502/503 before the request is applied.
    Http5xx,
    /// TOP `isp.*` error / PandaPon code 500, not applied.
    Isp,
    /// TOP code 7 / PandaPon code 429, not applied.
    RateLimit,
    /// Applied, then the response is lost.
    LostResponse,
    /// A permanent, non-authentication refusal, not applied: TOP code 41
    /// `isv.invalid-parameter` / PandaPon code 400 (clients classify it
    /// `Permanent(InvalidRequest)`).
    Permanent,
    /// An authentication failure, not applied: TOP code 25 Invalid Signature /
    /// PandaPon code 401 (clients classify it `Permanent(Auth)`).
    Auth,
    /// An expired or revoked session, not applied: TOP code 27 Invalid
    /// Session / PandaPon code 401, which has no sessions (clients classify
    /// it `Permanent(InvalidSession)` on TOP, `Permanent(Auth)` on PandaPon).
    InvalidSession,
}

/// Faults of one endpoint. Probabilities are in `0.0..=1.0`; `http_5xx`,
/// `isp`, `rate_limit`, `permanent`, `auth` and `invalid_session` are drawn
/// once together (their sum should not exceed 1), `lost_response`
/// separately, only for requests that got through.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultSpec {
    /// Least added latency, ms.
    pub latency_min_ms: u64,
    /// Most added latency, ms (uniform between min and max).
    pub latency_max_ms: u64,
    /// Probability of an HTTP 5xx (not applied).
    pub http_5xx: f64,
    /// Probability of a platform fault: TOP `isp.*`, PandaPon code 500 (not applied).
    pub isp: f64,
    /// Probability of a rate-limit answer (not applied).
    pub rate_limit: f64,
    /// The ban length announced by a rate-limit answer, seconds (at least 1).
    pub rate_limit_ban_secs: u64,
    /// Probability that the effect is applied and the response lost.
    pub lost_response: f64,
    /// How a lost response is lost.
    pub lost_response_mode: LostResponseMode,
    /// Probability of a permanent non-auth refusal (not applied).
    pub permanent: f64,
    /// Probability of an authentication failure (not applied).
    pub auth: f64,
    /// Probability of an invalid-session answer (not applied).
    pub invalid_session: f64,
    /// Faults for the next requests to this endpoint, in order, before any
    /// probability is drawn (deterministic tests: "lose the first response").
    pub script: Vec<FaultKind>,
}

impl FaultSpec {
    /// A spec with one probability set to 1: every request gets `kind`.
    pub fn always(kind: FaultKind) -> Self {
        let mut s = FaultSpec::default();
        match kind {
            FaultKind::None => {}
            FaultKind::Http5xx => s.http_5xx = 1.0,
            FaultKind::Isp => s.isp = 1.0,
            FaultKind::RateLimit => s.rate_limit = 1.0,
            FaultKind::LostResponse => s.lost_response = 1.0,
            FaultKind::Permanent => s.permanent = 1.0,
            FaultKind::Auth => s.auth = 1.0,
            FaultKind::InvalidSession => s.invalid_session = 1.0,
        }
        s
    }

    /// A spec whose next requests get `kinds`, then nothing.
    pub fn scripted(kinds: impl IntoIterator<Item = FaultKind>) -> Self {
        FaultSpec {
            script: kinds.into_iter().collect(),
            ..FaultSpec::default()
        }
    }
}

/// The decision for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    pub latency_ms: u64,
    /// A fault answered instead of applying the request.
    pub before: Option<FaultKind>,
    /// Lose the response after applying.
    pub lost: Option<LostResponseMode>,
    pub ban_secs: u64,
    /// 502 or 503.
    pub status_5xx: u16,
}

/// The live fault state: the profile plus the unconsumed scripts.
#[derive(Default)]
pub(crate) struct FaultState {
    pub profile: FaultProfile,
    scripts: BTreeMap<String, VecDeque<FaultKind>>,
}

fn unit(rng: &dyn Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

impl FaultState {
    pub fn new(profile: FaultProfile) -> Self {
        let scripts = profile
            .endpoints
            .iter()
            .filter(|(_, s)| !s.script.is_empty())
            .map(|(k, s)| (k.clone(), s.script.iter().copied().collect()))
            .collect();
        FaultState { profile, scripts }
    }

    pub fn is_empty(&self) -> bool {
        self.profile.endpoints.is_empty()
    }

    pub fn decide(&mut self, endpoint: &str, rng: &dyn Rng) -> Decision {
        let mut d = Decision {
            latency_ms: 0,
            before: None,
            lost: None,
            ban_secs: 1,
            status_5xx: 503,
        };
        let (key, spec) = match self.profile.endpoints.get_key_value(endpoint) {
            Some((k, s)) => (k.clone(), s),
            None => match self.profile.endpoints.get(DEFAULT_KEY) {
                Some(s) => (DEFAULT_KEY.to_owned(), s),
                None => return d,
            },
        };
        d.ban_secs = spec.rate_limit_ban_secs.max(1);
        d.status_5xx = if rng.below(2) == 0 { 502 } else { 503 };
        let lo = spec.latency_min_ms.min(spec.latency_max_ms);
        let hi = spec.latency_max_ms.max(lo);
        d.latency_ms = lo + rng.below(hi - lo + 1);
        let scripted = self.scripts.get_mut(&key).and_then(|q| q.pop_front());
        let kind = match scripted {
            Some(k) => k,
            None => {
                let u = unit(rng);
                let t_5xx = spec.http_5xx;
                let t_isp = t_5xx + spec.isp;
                let t_rate = t_isp + spec.rate_limit;
                let t_perm = t_rate + spec.permanent;
                let t_auth = t_perm + spec.auth;
                let t_session = t_auth + spec.invalid_session;
                if u < t_5xx {
                    FaultKind::Http5xx
                } else if u < t_isp {
                    FaultKind::Isp
                } else if u < t_rate {
                    FaultKind::RateLimit
                } else if u < t_perm {
                    FaultKind::Permanent
                } else if u < t_auth {
                    FaultKind::Auth
                } else if u < t_session {
                    FaultKind::InvalidSession
                } else if spec.lost_response > 0.0 && unit(rng) < spec.lost_response {
                    FaultKind::LostResponse
                } else {
                    FaultKind::None
                }
            }
        };
        match kind {
            FaultKind::None => {}
            FaultKind::LostResponse => d.lost = Some(spec.lost_response_mode),
            k => d.before = Some(k),
        }
        d
    }
}

/// How one gateway words the injected faults that are answered instead of
/// applying the request, in its own documented error envelope.
pub(crate) trait FaultReplies {
    /// The answer to `kind` (never `None`, `Http5xx` or `LostResponse`,
    /// which [`guard`] answers the same way for every gateway).
    fn refuse(&self, sim: &Sim, kind: FaultKind, d: &Decision) -> Response;
}

/// The one fault-injection seam of the simulator's handlers: decide the
/// faults of `endpoint`, add the latency, then either answer a refusal (HTTP
/// 5xx, or `replies` in the gateway's envelope) **without calling `apply`**,
/// or call `apply` (the effect happens) and, for a lost response, throw its
/// answer away.
///
/// Why a function and not a tower `Layer` around the router: a layer sees the
/// request before the handler has parsed it, but the fault decision needs
/// what only the handler knows after parsing — the endpoint name (for TOP the
/// signed `method` parameter, possibly in the form body; for PandaPon the
/// matched route) — and faults must be decided *after* authentication (a
/// badly signed request gets its own error and draws nothing), in the order
/// the seeded draws have always been taken. A layer would have to parse and
/// authenticate every request a second time. So both handlers call this one
/// function at the point where they know the endpoint and the request is
/// authenticated; only [`FaultReplies`] differs between them.
pub(crate) async fn guard(
    sim: &Sim,
    endpoint: &str,
    replies: &(impl FaultReplies + Sync),
    apply: impl FnOnce() -> Response,
) -> Response {
    let Some(d) = sim.decide_faults(endpoint) else {
        return apply();
    };
    if d.latency_ms > 0 {
        sim.inner
            .cfg
            .clock
            .sleep(std::time::Duration::from_millis(d.latency_ms))
            .await;
    }
    match d.before {
        None | Some(FaultKind::None) | Some(FaultKind::LostResponse) => {}
        Some(FaultKind::Http5xx) => return http_util::gateway_5xx(d.status_5xx),
        Some(kind) => return replies.refuse(sim, kind, &d),
    }
    let resp = apply();
    match d.lost {
        Some(mode) => http_util::lost(mode),
        None => resp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rescind_core::SplitMix64;

    #[test]
    fn profile_json_round_trip_and_default_fallback() {
        let json = r#"{"default":{"latency_min_ms":1,"latency_max_ms":3},
                       "tmall.tbc.order.cancel":{"isp":1.0,"lost_response_mode":"gateway_timeout"}}"#;
        let p = FaultProfile::from_json(json).unwrap();
        assert_eq!(p.spec_for("x").unwrap().latency_max_ms, 3);
        assert_eq!(p.spec_for("tmall.tbc.order.cancel").unwrap().isp, 1.0);
        let back: FaultProfile = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn scripts_then_probabilities() {
        let rng = SplitMix64::new(1);
        let mut st = FaultState::new(FaultProfile::everywhere(FaultSpec::scripted([
            FaultKind::LostResponse,
            FaultKind::RateLimit,
        ])));
        assert_eq!(st.decide("a", &rng).lost, Some(LostResponseMode::Drop));
        assert_eq!(st.decide("b", &rng).before, Some(FaultKind::RateLimit));
        let d = st.decide("a", &rng);
        assert_eq!((d.before, d.lost), (None, None));
    }

    #[test]
    fn rates_are_roughly_honoured() {
        let rng = SplitMix64::new(9);
        let spec = FaultSpec {
            http_5xx: 0.1,
            isp: 0.2,
            rate_limit: 0.3,
            latency_min_ms: 5,
            latency_max_ms: 10,
            ..FaultSpec::default()
        };
        let mut st = FaultState::new(FaultProfile::everywhere(spec));
        let mut counts = [0u32; 4];
        for _ in 0..10_000 {
            let d = st.decide("e", &rng);
            assert!((5..=10).contains(&d.latency_ms));
            match d.before {
                Some(FaultKind::Http5xx) => counts[0] += 1,
                Some(FaultKind::Isp) => counts[1] += 1,
                Some(FaultKind::RateLimit) => counts[2] += 1,
                _ => counts[3] += 1,
            }
        }
        assert!((800..1200).contains(&counts[0]), "{counts:?}");
        assert!((1700..2300).contains(&counts[1]), "{counts:?}");
        assert!((2600..3400).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn permanent_and_auth_kinds_are_drawn_after_the_others() {
        let rng = SplitMix64::new(3);
        let spec = FaultSpec {
            permanent: 0.2,
            auth: 0.3,
            invalid_session: 0.1,
            ..FaultSpec::default()
        };
        let mut st = FaultState::new(FaultProfile::everywhere(spec));
        let mut counts = BTreeMap::new();
        for _ in 0..10_000 {
            *counts
                .entry(format!("{:?}", st.decide("e", &rng).before))
                .or_insert(0u32) += 1;
        }
        let n = |k: &str| counts.get(k).copied().unwrap_or(0);
        assert!((1700..2300).contains(&n("Some(Permanent)")), "{counts:?}");
        assert!((2600..3400).contains(&n("Some(Auth)")), "{counts:?}");
        assert!(
            (800..1200).contains(&n("Some(InvalidSession)")),
            "{counts:?}"
        );
        for k in [
            FaultKind::Permanent,
            FaultKind::Auth,
            FaultKind::InvalidSession,
        ] {
            let mut st = FaultState::new(FaultProfile::everywhere(FaultSpec::always(k)));
            assert_eq!(st.decide("e", &rng).before, Some(k));
        }
        let json = r#"{"pandapon.taobao.refund.cancel":{"auth":1.0,"script":["permanent","invalid_session"]}}"#;
        let p = FaultProfile::from_json(json).unwrap();
        let spec = p.spec_for("pandapon.taobao.refund.cancel").unwrap();
        assert_eq!(spec.auth, 1.0);
        assert_eq!(
            spec.script,
            vec![FaultKind::Permanent, FaultKind::InvalidSession]
        );
    }
}
