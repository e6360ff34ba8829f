//! Reconciliation's judgement: what the backend believes about an order
//! against what its channel says, as a verdict, and the saga (or local
//! update) that converges the two. Pure: the lookups and the input parsing
//! live in `rescind-server`'s `reconcile`.
//!
//! `local_state` is one of `pending_pay`, `paid`, `refunding`, `cancelled`,
//! `refunded`.

use crate::{
    ChannelError, ErrorClass, OrderRef, OrderState, OrderStatus, PermanentReason, SagaInput,
};
use serde::{Deserialize, Serialize};

/// One order as the backend sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalOrder {
    /// Channel name as configured.
    pub channel: String,
    /// The channel's order id.
    pub order_id: String,
    /// The backend's state for it.
    pub local_state: LocalState,
    /// The refund the backend knows of, if any.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub refund_id: Option<String>,
    /// The account (shop) the order belongs to, where the channel has many;
    /// lookups and the converging saga act for it.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub account: Option<String>,
}

fn empty_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v: Option<String> = Option::deserialize(d)?;
    Ok(v.filter(|s| !s.trim().is_empty()))
}

/// The backend's view of an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalState {
    /// Not paid.
    PendingPay,
    /// Paid.
    Paid,
    /// A refund is open.
    Refunding,
    /// Cancelled.
    Cancelled,
    /// Refunded.
    Refunded,
}

/// The verdict for one order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Both sides agree.
    InSync,
    /// The backend thinks it cancelled/refunded; the channel still has it open.
    LocalCancelledUpstreamOpen,
    /// The channel cancelled/refunded it; the backend still thinks it open.
    UpstreamCancelledLocalOpen,
    /// The refund differs (which one, or whether one is open).
    RefundMismatch,
    /// Any other difference (e.g. the backend thinks unpaid, the buyer paid).
    StateMismatch,
    /// The channel does not know the order.
    NotFound,
    /// The lookup failed; nothing is known.
    LookupFailed,
}

impl Verdict {
    /// Does this verdict count as a mismatch for the exit code?
    pub fn is_mismatch(&self) -> bool {
        !matches!(self, Verdict::InSync)
    }
    /// Snake-case name.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::InSync => "in_sync",
            Verdict::LocalCancelledUpstreamOpen => "local_cancelled_upstream_open",
            Verdict::UpstreamCancelledLocalOpen => "upstream_cancelled_local_open",
            Verdict::RefundMismatch => "refund_mismatch",
            Verdict::StateMismatch => "state_mismatch",
            Verdict::NotFound => "not_found",
            Verdict::LookupFailed => "lookup_failed",
        }
    }
}

/// One reconciled order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The local row.
    pub local: LocalOrder,
    /// The channel's status, if it answered.
    pub upstream: Option<OrderStatus>,
    /// The verdict.
    pub verdict: Verdict,
    /// What to do about it, in words.
    pub detail: String,
}

impl Finding {
    /// The saga that converges this order upstream, if one does. Orders that
    /// need only a local update (the channel is ahead) get none.
    pub fn fix(&self) -> Option<SagaInput> {
        let up = self.upstream.as_ref()?;
        let order = OrderRef::new(self.local.channel.as_str(), self.local.order_id.as_str());
        let input = match (self.verdict.clone(), &up.state, self.local.local_state) {
            (Verdict::LocalCancelledUpstreamOpen, OrderState::PendingPay, _) => {
                Some(SagaInput::cancel_unpaid(order))
            }
            (Verdict::LocalCancelledUpstreamOpen, OrderState::Paid, _) => {
                Some(SagaInput::cancel_paid(order))
            }
            // The backend withdrew a refund (back to paid, refund id kept) that is still open upstream.
            (Verdict::RefundMismatch, OrderState::Refunding { refund_id }, LocalState::Paid)
                if self.local.refund_id.as_deref() == Some(refund_id.as_str()) =>
            {
                Some(SagaInput::withdraw_refund(order, refund_id.clone()))
            }
            _ => None,
        }?;
        Some(match &self.local.account {
            Some(a) => input.with_account(a.as_str()),
            None => input,
        })
    }
}

impl Finding {
    /// Where the channel is ahead (it cancelled or refunded the order, or the
    /// buyer paid), nothing upstream needs doing: the backend should adopt the
    /// channel's state. This is that updated local row; `None` for every other
    /// verdict.
    pub fn local_update(&self) -> Option<LocalOrder> {
        let up = &self.upstream.as_ref()?.state;
        if !matches!(
            self.verdict,
            Verdict::UpstreamCancelledLocalOpen | Verdict::StateMismatch
        ) {
            return None;
        }
        let (local_state, refund_id) = match up {
            OrderState::PendingPay => (LocalState::PendingPay, None),
            OrderState::Paid => (LocalState::Paid, None),
            OrderState::Refunding { refund_id } => {
                (LocalState::Refunding, Some(refund_id.0.clone()))
            }
            OrderState::Cancelled => (LocalState::Cancelled, None),
            OrderState::Refunded { refund_id } => (LocalState::Refunded, Some(refund_id.0.clone())),
        };
        Some(LocalOrder {
            local_state,
            refund_id,
            ..self.local.clone()
        })
    }
}

/// Judge one order from its lookup result.
pub fn judge(local: &LocalOrder, lookup: Result<OrderStatus, ChannelError>) -> Finding {
    use LocalState as L;
    use OrderState as U;
    let status = match lookup {
        Ok(s) => s,
        Err(e) => {
            let verdict = match &e.class {
                ErrorClass::Permanent(PermanentReason::NotFound) => Verdict::NotFound,
                _ => Verdict::LookupFailed,
            };
            return Finding {
                local: local.clone(),
                upstream: None,
                detail: e.to_string(),
                verdict,
            };
        }
    };
    let local_refund = local.refund_id.as_deref();
    let (verdict, detail) = match (local.local_state, &status.state) {
        (L::PendingPay, U::PendingPay) | (L::Paid, U::Paid) | (L::Cancelled, U::Cancelled) => {
            (Verdict::InSync, String::new())
        }
        (L::Refunding, U::Refunding { refund_id }) | (L::Refunded, U::Refunded { refund_id }) => {
            if local_refund.is_none() || local_refund == Some(refund_id.as_str()) {
                (Verdict::InSync, String::new())
            } else {
                (
                    Verdict::RefundMismatch,
                    format!(
                        "local refund {} but upstream refund {refund_id}",
                        local_refund.unwrap_or("-")
                    ),
                )
            }
        }
        (L::Cancelled | L::Refunded, U::PendingPay | U::Paid) => (
            Verdict::LocalCancelledUpstreamOpen,
            format!("upstream still {}: cancel it upstream", status.state),
        ),
        (L::Cancelled | L::Refunded, U::Refunding { .. }) => (
            Verdict::LocalCancelledUpstreamOpen,
            format!(
                "upstream refund still open ({}): wait for it or follow up",
                status.state
            ),
        ),
        (L::PendingPay | L::Paid | L::Refunding, U::Cancelled | U::Refunded { .. }) => (
            Verdict::UpstreamCancelledLocalOpen,
            format!("upstream is {}: update the local order", status.state),
        ),
        (L::Paid, U::Refunding { refund_id }) => {
            (
                Verdict::RefundMismatch,
                if local_refund == Some(refund_id.as_str()) {
                    format!("refund {refund_id} was withdrawn locally but is open upstream: withdraw it")
                } else {
                    format!("upstream has refund {refund_id} open that the backend does not know")
                },
            )
        }
        (L::Refunding, U::Paid) => (
            Verdict::RefundMismatch,
            "local refund open, upstream has none (withdrawn or refused)".into(),
        ),
        (L::Cancelled, U::Refunded { .. }) | (L::Refunded, U::Cancelled) => (
            Verdict::RefundMismatch,
            format!("local {:?} vs upstream {}", local.local_state, status.state),
        ),
        (L::Refunding | L::Paid, U::PendingPay)
        | (L::PendingPay, U::Paid | U::Refunding { .. }) => (
            Verdict::StateMismatch,
            format!(
                "local {:?} vs upstream {}: update the local order",
                local.local_state, status.state
            ),
        ),
    };
    Finding {
        local: local.clone(),
        upstream: Some(status),
        verdict,
        detail,
    }
}

/// Counts per verdict, in a fixed order.
pub fn summary(findings: &[Finding]) -> Vec<(&'static str, usize)> {
    let all = [
        Verdict::InSync,
        Verdict::LocalCancelledUpstreamOpen,
        Verdict::UpstreamCancelledLocalOpen,
        Verdict::RefundMismatch,
        Verdict::StateMismatch,
        Verdict::NotFound,
        Verdict::LookupFailed,
    ];
    all.iter()
        .map(|v| {
            (
                v.name(),
                findings.iter().filter(|f| &f.verdict == v).count(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RefundId;

    fn local(state: LocalState, refund: Option<&str>) -> LocalOrder {
        LocalOrder {
            channel: "c".into(),
            order_id: "1".into(),
            local_state: state,
            refund_id: refund.map(Into::into),
            account: None,
        }
    }
    fn up(state: OrderState) -> Result<OrderStatus, ChannelError> {
        Ok(OrderStatus {
            upstream: state.name().into(),
            state,
        })
    }
    fn r(s: &str) -> RefundId {
        RefundId(s.into())
    }

    /// (local, refund, upstream, verdict, fix kind)
    type Case = (
        LocalState,
        Option<&'static str>,
        Result<OrderStatus, ChannelError>,
        Verdict,
        Option<&'static str>,
    );

    #[test]
    fn verdict_table() {
        use LocalState as L;
        let cases: Vec<Case> = vec![
            (
                L::PendingPay,
                None,
                up(OrderState::PendingPay),
                Verdict::InSync,
                None,
            ),
            (
                L::Cancelled,
                None,
                up(OrderState::Cancelled),
                Verdict::InSync,
                None,
            ),
            (
                L::Cancelled,
                None,
                up(OrderState::PendingPay),
                Verdict::LocalCancelledUpstreamOpen,
                Some("cancel_unpaid"),
            ),
            (
                L::Refunded,
                None,
                up(OrderState::Paid),
                Verdict::LocalCancelledUpstreamOpen,
                Some("cancel_paid"),
            ),
            (
                L::Paid,
                None,
                up(OrderState::Cancelled),
                Verdict::UpstreamCancelledLocalOpen,
                None,
            ),
            (
                L::Refunding,
                Some("R1"),
                up(OrderState::Refunding { refund_id: r("R1") }),
                Verdict::InSync,
                None,
            ),
            (
                L::Refunding,
                Some("R1"),
                up(OrderState::Refunding { refund_id: r("R2") }),
                Verdict::RefundMismatch,
                None,
            ),
            (
                L::Paid,
                Some("R1"),
                up(OrderState::Refunding { refund_id: r("R1") }),
                Verdict::RefundMismatch,
                Some("withdraw_refund"),
            ),
            (
                L::Paid,
                None,
                up(OrderState::Refunding { refund_id: r("R1") }),
                Verdict::RefundMismatch,
                None,
            ),
            (
                L::Paid,
                None,
                Err(ChannelError::permanent(PermanentReason::NotFound, "no")),
                Verdict::NotFound,
                None,
            ),
            (
                L::Paid,
                None,
                Err(ChannelError::in_doubt("timeout")),
                Verdict::LookupFailed,
                None,
            ),
        ];
        for (state, refund, upstream, verdict, fix) in cases {
            let f = judge(&local(state, refund), upstream);
            assert_eq!(f.verdict, verdict, "{state:?} {refund:?}");
            assert_eq!(
                f.fix().map(|i| i.kind.to_string()).as_deref(),
                fix,
                "{state:?} {refund:?}"
            );
            // A finding is fixed upstream, updated locally, or neither — never both.
            assert!(
                !(f.fix().is_some() && f.local_update().is_some()),
                "{state:?} {refund:?}"
            );
            if f.verdict == Verdict::UpstreamCancelledLocalOpen {
                let row = f.local_update().expect("the channel is ahead: adopt it");
                let again = judge(&row, Ok(f.upstream.clone().expect("looked up")));
                assert_eq!(again.verdict, Verdict::InSync, "{state:?}");
            }
        }
    }
}
