//! Status vocabularies, one table per channel, mapped onto rescind's machines.
//!
//! The tables are data ([`TAOBAO_ORDER_STATUSES`], [`ALIBABA_ORDER_STATUSES`],
//! [`TAOBAO_REFUND_STATUSES`], [`ALIBABA_REFUND_STATUSES`]); `docs/channels/pandapon.md`
//! prints the same tables. An unknown word is an [`UnknownStatus`] error that
//! names it, never a guess.

use rescind_core::{OrderState, RefundId, RefundState};

/// What an upstream order status word means, before refund details are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderWord {
    /// Not paid yet.
    PendingPay,
    /// Paid; Refunding while a refund is open.
    Paid,
    /// Paid and final (Taobao `TRADE_FINISHED`): Paid whatever the refund.
    Finished,
    /// Closed before payment.
    Cancelled,
    /// Closed after a full refund: Refunded (needs the refund id).
    Refunded,
    /// Closed (1688 `terminated`): Refunded when a refund completed, else Cancelled.
    Terminated,
}

/// What an upstream refund status word means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefundWord {
    /// Open.
    Requested,
    /// Withdrawn by the buyer.
    Withdrawn,
    /// Money returned.
    Completed,
    /// Refused by the seller.
    Refused,
}

/// Taobao order statuses via PandaPon (assumed: the Taobao trade vocabulary).
pub const TAOBAO_ORDER_STATUSES: &[(&str, OrderWord)] = &[
    ("WAIT_BUYER_PAY", OrderWord::PendingPay),
    ("WAIT_SELLER_SEND_GOODS", OrderWord::Paid),
    ("WAIT_BUYER_CONFIRM_GOODS", OrderWord::Paid),
    ("TRADE_FINISHED", OrderWord::Finished),
    ("TRADE_CLOSED_BY_TAOBAO", OrderWord::Cancelled),
    ("TRADE_CLOSED", OrderWord::Refunded),
];

/// 1688 order statuses.
pub const ALIBABA_ORDER_STATUSES: &[(&str, OrderWord)] = &[
    ("waitbuyerpay", OrderWord::PendingPay),
    ("waitsellersend", OrderWord::Paid),
    ("waitbuyerreceive", OrderWord::Paid),
    ("confirm_goods", OrderWord::Paid),
    ("success", OrderWord::Paid),
    ("cancel", OrderWord::Cancelled),
    ("terminated", OrderWord::Terminated),
];

/// Taobao refund (reverse order) statuses.
pub const TAOBAO_REFUND_STATUSES: &[(&str, RefundWord)] = &[
    ("WAIT_SELLER_AGREE", RefundWord::Requested),
    ("WAIT_BUYER_RETURN_GOODS", RefundWord::Requested),
    ("WAIT_SELLER_CONFIRM_GOODS", RefundWord::Requested),
    ("SELLER_REFUSE_BUYER", RefundWord::Refused),
    ("CLOSED", RefundWord::Withdrawn),
    ("SUCCESS", RefundWord::Completed),
];

/// 1688 refund statuses.
pub const ALIBABA_REFUND_STATUSES: &[(&str, RefundWord)] = &[
    ("waitselleragree", RefundWord::Requested),
    ("waitbuyermodify", RefundWord::Requested),
    ("waitbuyersend", RefundWord::Requested),
    ("waitsellerreceive", RefundWord::Requested),
    ("refundsuccess", RefundWord::Completed),
    ("refundclose", RefundWord::Withdrawn),
];

/// Which PandaPon platform a status belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Platform {
    /// Taobao (`messagePlatform` 0, channel `pandapon-taobao`).
    Taobao,
    /// 1688 (`messagePlatform` 1, channel `pandapon-1688`).
    Alibaba,
}

impl Platform {
    /// The rescind channel name of this platform.
    pub fn channel(&self) -> &'static str {
        match self {
            Platform::Taobao => crate::TAOBAO_CHANNEL,
            Platform::Alibaba => crate::ALIBABA_CHANNEL,
        }
    }
    /// From `messagePlatform`: 0 Taobao, 1 1688.
    pub fn from_code(code: i64) -> Option<Platform> {
        match code {
            0 => Some(Platform::Taobao),
            1 => Some(Platform::Alibaba),
            _ => None,
        }
    }
    fn order_table(&self) -> &'static [(&'static str, OrderWord)] {
        match self {
            Platform::Taobao => TAOBAO_ORDER_STATUSES,
            Platform::Alibaba => ALIBABA_ORDER_STATUSES,
        }
    }
    fn refund_table(&self) -> &'static [(&'static str, RefundWord)] {
        match self {
            Platform::Taobao => TAOBAO_REFUND_STATUSES,
            Platform::Alibaba => ALIBABA_REFUND_STATUSES,
        }
    }
}

/// A status word no table knows, or one that cannot be mapped with what was given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{channel}: {what} {value:?}: {reason}")]
pub struct UnknownStatus {
    /// The channel name.
    pub channel: &'static str,
    /// `order status` or `refund status`.
    pub what: &'static str,
    /// The word as received.
    pub value: String,
    /// Why it cannot be mapped.
    pub reason: String,
}

impl From<UnknownStatus> for rescind_core::ChannelError {
    fn from(e: UnknownStatus) -> Self {
        rescind_core::ChannelError::permanent(
            rescind_core::PermanentReason::MalformedResponse,
            e.to_string(),
        )
    }
}

/// The meaning of a refund status word.
pub fn refund_word(platform: Platform, status: &str) -> Result<RefundWord, UnknownStatus> {
    platform
        .refund_table()
        .iter()
        .find(|(w, _)| *w == status)
        .map(|(_, m)| *m)
        .ok_or_else(|| UnknownStatus {
            channel: platform.channel(),
            what: "refund status",
            value: status.to_owned(),
            reason: "not in the refund status table".into(),
        })
}

/// Map a refund status word onto rescind's refund state; `refuse_reason`
/// is kept when the refund was refused.
pub fn refund_state(
    platform: Platform,
    status: &str,
    refuse_reason: Option<String>,
) -> Result<RefundState, UnknownStatus> {
    Ok(match refund_word(platform, status)? {
        RefundWord::Requested => RefundState::Requested,
        RefundWord::Withdrawn => RefundState::Withdrawn,
        RefundWord::Completed => RefundState::Completed,
        RefundWord::Refused => RefundState::Refused {
            reason: refuse_reason.filter(|r| !r.is_empty()),
        },
    })
}

/// The meaning of an order status word.
pub fn order_word(platform: Platform, status: &str) -> Result<OrderWord, UnknownStatus> {
    platform
        .order_table()
        .iter()
        .find(|(w, _)| *w == status)
        .map(|(_, m)| *m)
        .ok_or_else(|| UnknownStatus {
            channel: platform.channel(),
            what: "order status",
            value: status.to_owned(),
            reason: "not in the order status table".into(),
        })
}

/// Map an order detail (status word plus the refund it reports, if any)
/// onto rescind's order state.
///
/// `refund` is `(refundId, refundStatus)` as the detail reports them; when a
/// detail reports no refund, there is none.
pub fn order_state(
    platform: Platform,
    status: &str,
    refund: Option<(&str, Option<&str>)>,
) -> Result<OrderState, UnknownStatus> {
    let word = order_word(platform, status)?;
    let refund = match refund {
        Some((id, st)) if !id.is_empty() => {
            let w = match st.filter(|s| !s.is_empty()) {
                Some(s) => Some(refund_word(platform, s)?),
                None => None,
            };
            Some((RefundId(id.to_owned()), w))
        }
        _ => None,
    };
    let needs_refund = |why: &str| UnknownStatus {
        channel: platform.channel(),
        what: "order status",
        value: status.to_owned(),
        reason: why.to_owned(),
    };
    Ok(match word {
        OrderWord::PendingPay => OrderState::PendingPay,
        OrderWord::Finished => OrderState::Paid,
        OrderWord::Cancelled => OrderState::Cancelled,
        OrderWord::Paid => match refund {
            // An open refund (or one whose status is not given) makes it Refunding.
            Some((refund_id, None | Some(RefundWord::Requested))) => {
                OrderState::Refunding { refund_id }
            }
            _ => OrderState::Paid,
        },
        OrderWord::Refunded => match refund {
            Some((refund_id, _)) => OrderState::Refunded { refund_id },
            None => {
                return Err(needs_refund(
                    "closed after a refund, but no refundId was reported",
                ))
            }
        },
        OrderWord::Terminated => match refund {
            Some((refund_id, Some(RefundWord::Completed))) => OrderState::Refunded { refund_id },
            _ => OrderState::Cancelled,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Platform::{Alibaba as A, Taobao as T};

    #[test]
    fn refund_tables() {
        let cases: &[(Platform, &str, Option<RefundState>)] = &[
            (T, "WAIT_SELLER_AGREE", Some(RefundState::Requested)),
            (T, "WAIT_BUYER_RETURN_GOODS", Some(RefundState::Requested)),
            (T, "WAIT_SELLER_CONFIRM_GOODS", Some(RefundState::Requested)),
            (
                T,
                "SELLER_REFUSE_BUYER",
                Some(RefundState::Refused { reason: None }),
            ),
            (T, "CLOSED", Some(RefundState::Withdrawn)),
            (T, "SUCCESS", Some(RefundState::Completed)),
            (T, "refundsuccess", None),
            (T, "", None),
            (A, "waitselleragree", Some(RefundState::Requested)),
            (A, "waitbuyermodify", Some(RefundState::Requested)),
            (A, "waitbuyersend", Some(RefundState::Requested)),
            (A, "waitsellerreceive", Some(RefundState::Requested)),
            (A, "refundsuccess", Some(RefundState::Completed)),
            (A, "refundclose", Some(RefundState::Withdrawn)),
            (A, "SUCCESS", None),
        ];
        for (p, s, want) in cases {
            let got = refund_state(*p, s, None);
            match want {
                Some(w) => assert_eq!(got.as_ref(), Ok(w), "{p:?} {s}"),
                None => {
                    let e = got.unwrap_err();
                    assert!(e.to_string().contains(&format!("{s:?}")), "{e}");
                }
            }
        }
    }

    #[test]
    fn order_tables() {
        let r = |s: &str| RefundId(s.into());
        type Case<'a> = (
            Platform,
            &'a str,
            Option<(&'a str, Option<&'a str>)>,
            Option<OrderState>,
        );
        let cases: &[Case] = &[
            (T, "WAIT_BUYER_PAY", None, Some(OrderState::PendingPay)),
            (T, "WAIT_SELLER_SEND_GOODS", None, Some(OrderState::Paid)),
            (
                T,
                "WAIT_SELLER_SEND_GOODS",
                Some(("R1", Some("WAIT_SELLER_AGREE"))),
                Some(OrderState::Refunding { refund_id: r("R1") }),
            ),
            (
                T,
                "WAIT_SELLER_SEND_GOODS",
                Some(("R1", Some("CLOSED"))),
                Some(OrderState::Paid),
            ),
            (
                T,
                "WAIT_BUYER_CONFIRM_GOODS",
                Some(("R1", None)),
                Some(OrderState::Refunding { refund_id: r("R1") }),
            ),
            (T, "TRADE_FINISHED", None, Some(OrderState::Paid)),
            (
                T,
                "TRADE_CLOSED_BY_TAOBAO",
                None,
                Some(OrderState::Cancelled),
            ),
            (
                T,
                "TRADE_CLOSED",
                Some(("R9", Some("SUCCESS"))),
                Some(OrderState::Refunded { refund_id: r("R9") }),
            ),
            (T, "TRADE_CLOSED", None, None),
            (
                T,
                "WAIT_SELLER_SEND_GOODS",
                Some(("R1", Some("BOGUS"))),
                None,
            ),
            (T, "waitbuyerpay", None, None),
            (A, "waitbuyerpay", None, Some(OrderState::PendingPay)),
            (A, "waitsellersend", None, Some(OrderState::Paid)),
            (
                A,
                "waitbuyerreceive",
                Some(("9", Some("waitselleragree"))),
                Some(OrderState::Refunding { refund_id: r("9") }),
            ),
            (A, "confirm_goods", None, Some(OrderState::Paid)),
            (
                A,
                "success",
                Some(("9", Some("refundclose"))),
                Some(OrderState::Paid),
            ),
            (A, "cancel", None, Some(OrderState::Cancelled)),
            (A, "terminated", None, Some(OrderState::Cancelled)),
            (
                A,
                "terminated",
                Some(("9", Some("refundsuccess"))),
                Some(OrderState::Refunded { refund_id: r("9") }),
            ),
            (
                A,
                "terminated",
                Some(("9", Some("refundclose"))),
                Some(OrderState::Cancelled),
            ),
            (A, "WAIT_BUYER_PAY", None, None),
        ];
        for (p, s, refund, want) in cases {
            let got = order_state(*p, s, *refund);
            match want {
                Some(w) => assert_eq!(got.as_ref(), Ok(w), "{p:?} {s} {refund:?}"),
                None => assert!(got.is_err(), "{p:?} {s} {refund:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn refused_keeps_reason() {
        assert_eq!(
            refund_state(T, "SELLER_REFUSE_BUYER", Some("shipped".into())),
            Ok(RefundState::Refused {
                reason: Some("shipped".into())
            })
        );
    }
}
