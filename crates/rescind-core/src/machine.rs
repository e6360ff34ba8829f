//! The two pure state machines: an order as the backend sees it on one
//! channel, and a refund (reverse order).
//!
//! Both are `state × event → Result<state>`; any pair not in the tables of
//! DESIGN.md §2 is an [`InvalidTransition`] naming the order, the state and the
//! event. Nothing here panics or silently ignores an event.

use crate::ids::{OrderId, RefundId};
use serde::{Deserialize, Serialize};
use std::fmt;

/// An order's state. Variants carry the data that state needs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum OrderState {
    /// Created, not paid yet: can be cancelled without a refund.
    PendingPay,
    /// Paid: cancelling opens a refund.
    Paid,
    /// A refund is open against the order.
    Refunding {
        /// The open refund.
        refund_id: RefundId,
    },
    /// Cancelled before payment. Terminal.
    Cancelled,
    /// Refunded in full. Terminal.
    Refunded {
        /// The refund that completed.
        refund_id: RefundId,
    },
}

impl OrderState {
    /// Cancelled and Refunded are terminal.
    pub fn is_terminal(&self) -> bool {
        matches!(self, OrderState::Cancelled | OrderState::Refunded { .. })
    }
    /// The state's name without its data.
    pub fn name(&self) -> &'static str {
        match self {
            OrderState::PendingPay => "PendingPay",
            OrderState::Paid => "Paid",
            OrderState::Refunding { .. } => "Refunding",
            OrderState::Cancelled => "Cancelled",
            OrderState::Refunded { .. } => "Refunded",
        }
    }
}

impl fmt::Display for OrderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrderState::Refunding { refund_id } => write!(f, "Refunding({refund_id})"),
            OrderState::Refunded { refund_id } => write!(f, "Refunded({refund_id})"),
            other => f.write_str(other.name()),
        }
    }
}

/// Something that happened to an order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum OrderEvent {
    /// The buyer's payment was confirmed.
    PaymentConfirmed,
    /// The order was cancelled upstream before payment.
    CancelledUpstream,
    /// A refund was opened (cancel after payment, or the buyer's after-sales request).
    RefundOpened {
        /// The refund opened.
        refund_id: RefundId,
    },
    /// The open refund completed.
    RefundCompleted {
        /// The refund that completed.
        refund_id: RefundId,
    },
    /// The open refund was withdrawn (refund-cancel).
    RefundWithdrawn {
        /// The refund withdrawn.
        refund_id: RefundId,
    },
    /// The seller refused the open refund.
    RefundRefused {
        /// The refund refused.
        refund_id: RefundId,
    },
}

impl OrderEvent {
    /// The event's name without its data.
    pub fn name(&self) -> &'static str {
        match self {
            OrderEvent::PaymentConfirmed => "PaymentConfirmed",
            OrderEvent::CancelledUpstream => "CancelledUpstream",
            OrderEvent::RefundOpened { .. } => "RefundOpened",
            OrderEvent::RefundCompleted { .. } => "RefundCompleted",
            OrderEvent::RefundWithdrawn { .. } => "RefundWithdrawn",
            OrderEvent::RefundRefused { .. } => "RefundRefused",
        }
    }
}

impl fmt::Display for OrderEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrderEvent::RefundOpened { refund_id }
            | OrderEvent::RefundCompleted { refund_id }
            | OrderEvent::RefundWithdrawn { refund_id }
            | OrderEvent::RefundRefused { refund_id } => write!(f, "{}({refund_id})", self.name()),
            other => f.write_str(other.name()),
        }
    }
}

/// A (state, event) pair outside the machine's table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid transition for {subject}: event {event} is not allowed in state {state}")]
pub struct InvalidTransition {
    /// What the machine was tracking, e.g. `order tmall-tbc:123` or `refund R1`.
    pub subject: String,
    /// The state, rendered.
    pub state: String,
    /// The event, rendered.
    pub event: String,
}

/// The order machine: DESIGN.md §2.
///
/// A refund event must name the refund that is open; an event for another
/// refund is an invalid transition (it belongs to a different reverse order).
pub fn order_transition(
    order: &OrderId,
    state: &OrderState,
    event: &OrderEvent,
) -> Result<OrderState, InvalidTransition> {
    use OrderEvent as E;
    use OrderState as S;
    let next = match (state, event) {
        (S::PendingPay, E::PaymentConfirmed) => Some(S::Paid),
        (S::PendingPay, E::CancelledUpstream) => Some(S::Cancelled),
        (S::Paid, E::RefundOpened { refund_id }) => Some(S::Refunding {
            refund_id: refund_id.clone(),
        }),
        (S::Refunding { refund_id: open }, E::RefundCompleted { refund_id })
            if open == refund_id =>
        {
            Some(S::Refunded {
                refund_id: refund_id.clone(),
            })
        }
        (S::Refunding { refund_id: open }, E::RefundWithdrawn { refund_id })
        | (S::Refunding { refund_id: open }, E::RefundRefused { refund_id })
            if open == refund_id =>
        {
            Some(S::Paid)
        }
        _ => None,
    };
    next.ok_or_else(|| InvalidTransition {
        subject: format!("order {order}"),
        state: state.to_string(),
        event: event.to_string(),
    })
}

/// A refund's (reverse order's) state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RefundState {
    /// Requested and open.
    Requested,
    /// Withdrawn by the buyer (refund-cancel). Terminal.
    Withdrawn,
    /// Money returned. Terminal.
    Completed,
    /// Refused by the seller. Terminal.
    Refused {
        /// The seller's reason, when the channel gives one.
        reason: Option<String>,
    },
}

impl RefundState {
    /// Withdrawn, Completed and Refused are terminal.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, RefundState::Requested)
    }
    /// The state's name without its data.
    pub fn name(&self) -> &'static str {
        match self {
            RefundState::Requested => "Requested",
            RefundState::Withdrawn => "Withdrawn",
            RefundState::Completed => "Completed",
            RefundState::Refused { .. } => "Refused",
        }
    }
}

impl fmt::Display for RefundState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Something that happened to a refund.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RefundEvent {
    /// The buyer withdrew the refund.
    Withdraw,
    /// The refund was paid out.
    Complete,
    /// The seller refused it.
    Refuse {
        /// The seller's reason, when given.
        reason: Option<String>,
    },
}

impl RefundEvent {
    /// The event's name without its data.
    pub fn name(&self) -> &'static str {
        match self {
            RefundEvent::Withdraw => "Withdraw",
            RefundEvent::Complete => "Complete",
            RefundEvent::Refuse { .. } => "Refuse",
        }
    }
}

impl fmt::Display for RefundEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The refund machine: Requested → {Withdrawn, Completed, Refused}.
pub fn refund_transition(
    refund: &RefundId,
    state: &RefundState,
    event: &RefundEvent,
) -> Result<RefundState, InvalidTransition> {
    match (state, event) {
        (RefundState::Requested, RefundEvent::Withdraw) => Ok(RefundState::Withdrawn),
        (RefundState::Requested, RefundEvent::Complete) => Ok(RefundState::Completed),
        (RefundState::Requested, RefundEvent::Refuse { reason }) => Ok(RefundState::Refused {
            reason: reason.clone(),
        }),
        _ => Err(InvalidTransition {
            subject: format!("refund {refund}"),
            state: state.to_string(),
            event: event.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RefundId {
        RefundId(s.into())
    }

    /// Every order state × every order event. `Some(next)` rows must move;
    /// every `None` must be an `InvalidTransition` naming order, state and event.
    #[test]
    fn order_table_is_exhaustive() {
        let states = [
            OrderState::PendingPay,
            OrderState::Paid,
            OrderState::Refunding { refund_id: r("R1") },
            OrderState::Cancelled,
            OrderState::Refunded { refund_id: r("R1") },
        ];
        let events = [
            OrderEvent::PaymentConfirmed,
            OrderEvent::CancelledUpstream,
            OrderEvent::RefundOpened { refund_id: r("R1") },
            OrderEvent::RefundCompleted { refund_id: r("R1") },
            OrderEvent::RefundWithdrawn { refund_id: r("R1") },
            OrderEvent::RefundRefused { refund_id: r("R1") },
            OrderEvent::RefundCompleted { refund_id: r("R2") },
            OrderEvent::RefundWithdrawn { refund_id: r("R2") },
        ];
        // expected[state][event]
        use OrderState as S;
        let refunding = S::Refunding { refund_id: r("R1") };
        let refunded = S::Refunded { refund_id: r("R1") };
        let table: [[Option<OrderState>; 8]; 5] = [
            [
                Some(S::Paid),
                Some(S::Cancelled),
                None,
                None,
                None,
                None,
                None,
                None,
            ],
            [
                None,
                None,
                Some(refunding.clone()),
                None,
                None,
                None,
                None,
                None,
            ],
            [
                None,
                None,
                None,
                Some(refunded),
                Some(S::Paid),
                Some(S::Paid),
                None,
                None,
            ],
            [None, None, None, None, None, None, None, None],
            [None, None, None, None, None, None, None, None],
        ];
        let order = OrderId("O-42".into());
        let mut moved = 0;
        for (si, state) in states.iter().enumerate() {
            for (ei, event) in events.iter().enumerate() {
                let got = order_transition(&order, state, event);
                match &table[si][ei] {
                    Some(next) => {
                        assert_eq!(got.as_ref(), Ok(next), "{state} × {event}");
                        moved += 1;
                    }
                    None => {
                        let err = got.expect_err("pair must be invalid");
                        assert_eq!(err.subject, "order O-42");
                        assert_eq!(err.state, state.to_string());
                        assert_eq!(err.event, event.to_string());
                        let msg = err.to_string();
                        assert!(
                            msg.contains("O-42")
                                && msg.contains(&err.state)
                                && msg.contains(&err.event),
                            "{msg}"
                        );
                    }
                }
            }
        }
        assert_eq!(moved, 6, "exactly the six rows of DESIGN.md §2 move");
    }

    #[test]
    fn refund_table_is_exhaustive() {
        let states = [
            RefundState::Requested,
            RefundState::Withdrawn,
            RefundState::Completed,
            RefundState::Refused { reason: None },
        ];
        let events = [
            RefundEvent::Withdraw,
            RefundEvent::Complete,
            RefundEvent::Refuse {
                reason: Some("no".into()),
            },
        ];
        let table: [[Option<RefundState>; 3]; 4] = [
            [
                Some(RefundState::Withdrawn),
                Some(RefundState::Completed),
                Some(RefundState::Refused {
                    reason: Some("no".into()),
                }),
            ],
            [None, None, None],
            [None, None, None],
            [None, None, None],
        ];
        let id = r("R9");
        for (si, state) in states.iter().enumerate() {
            for (ei, event) in events.iter().enumerate() {
                let got = refund_transition(&id, state, event);
                match &table[si][ei] {
                    Some(next) => assert_eq!(got.as_ref(), Ok(next)),
                    None => {
                        let err = got.expect_err("pair must be invalid");
                        assert_eq!(err.subject, "refund R9");
                        assert_eq!(err.state, state.to_string());
                        assert_eq!(err.event, event.to_string());
                    }
                }
            }
        }
    }
}
