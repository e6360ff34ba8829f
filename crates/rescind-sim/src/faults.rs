//! Fault injection: per-endpoint latency, error rates and lost responses.
//!
//! A [`FaultProfile`] maps endpoint names (TOP method names, `pandapon.*`
//! names, or `default`) to a [`FaultSpec`]. An endpoint's own entry replaces
//! the `default` entry entirely (no merging). Every draw comes from the
//! simulator's seeded [`rescind_core::SplitMix64`].

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
}

/// Faults of one endpoint. Probabilities are in `0.0..=1.0`; `http_5xx`,
/// `isp` and `rate_limit` are drawn once together (their sum should not
/// exceed 1), `lost_response` separately, only for requests that got through.
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
                if u < t_5xx {
                    FaultKind::Http5xx
                } else if u < t_isp {
                    FaultKind::Isp
                } else if u < t_rate {
                    FaultKind::RateLimit
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
}
