//! Each action's declared properties, fold, operator outcome and checks.

use super::*;
use crate::channel::{
    check_decimal_u64, CancelOrder, CancelOutcome, CancelRequest, RefundOpened,
    ReleaseStock as ReleaseStockTrait,
};
use crate::ids::{OrderRef, StockLockRef};

fn order() -> OrderRef {
    OrderRef::new("tbc", "1001")
}

fn all() -> Vec<Action> {
    vec![
        Action::CancelUnpaid(CancelUnpaid { order: order() }),
        Action::CancelPaid(CancelPaid { order: order() }),
        Action::WithdrawRefund(WithdrawRefund {
            order: order(),
            refund_id: RefundId::from("R1"),
        }),
        Action::ReleaseStock(ReleaseStock {
            lock: StockLockRef::new("damai", "L1"),
        }),
        Action::custom("notify", serde_json::json!({"n": 1})),
    ]
}

#[test]
fn names_irreversibility_and_already_done() {
    let got: Vec<(String, bool, bool)> = all()
        .iter()
        .map(|a| {
            (
                a.name().to_owned(),
                a.irreversible(),
                a.kind().already_done().is_some(),
            )
        })
        .collect();
    let want = [
        ("cancel_unpaid", true, true),
        ("cancel_paid", true, false),
        ("withdraw_refund", false, true),
        ("release_stock", false, true),
        ("notify", false, true),
    ];
    let want: Vec<(String, bool, bool)> = want
        .iter()
        .map(|(n, i, a)| (n.to_string(), *i, *a))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn the_journaled_shape_is_unchanged_by_the_module_split() {
    let a = Action::CancelUnpaid(CancelUnpaid { order: order() });
    let json = serde_json::to_value(&a).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"action": "cancel_unpaid", "order": {"channel": "tbc", "order_id": "1001"}})
    );
    let back: Action = serde_json::from_value(json).unwrap();
    assert_eq!(back, a);
    let c: Action =
        serde_json::from_str(r#"{"action":"custom","name":"x","payload":null}"#).unwrap();
    assert_eq!(c, Action::custom("x", serde_json::Value::Null));
}

#[test]
fn each_action_folds_its_own_outcome_and_refuses_foreign_ones() {
    let refund = RefundId::from("R1");
    let cases: Vec<(Action, OrderState, StepOutcome, Vec<Change>)> = vec![
        (
            all()[0].clone(),
            OrderState::PendingPay,
            StepOutcome::Cancelled { already: false },
            vec![Change::Order(OrderEvent::CancelledUpstream)],
        ),
        (
            all()[0].clone(),
            OrderState::Cancelled,
            StepOutcome::Cancelled { already: true },
            vec![],
        ),
        (
            all()[1].clone(),
            OrderState::Paid,
            StepOutcome::RefundOpened {
                refund_id: refund.clone(),
            },
            vec![
                Change::Order(OrderEvent::RefundOpened {
                    refund_id: refund.clone(),
                }),
                Change::OpenedRefund(refund.clone()),
                Change::Refund(RefundState::Requested),
            ],
        ),
        (
            all()[2].clone(),
            OrderState::Refunding {
                refund_id: refund.clone(),
            },
            StepOutcome::RefundWithdrawn { already: false },
            vec![
                Change::Order(OrderEvent::RefundWithdrawn {
                    refund_id: refund.clone(),
                }),
                Change::Refund(RefundState::Withdrawn),
            ],
        ),
        (
            all()[2].clone(),
            OrderState::Refunding {
                refund_id: refund.clone(),
            },
            StepOutcome::Conflict {
                conflict: Conflict::RefundClosed,
                message: "closed".into(),
            },
            vec![
                Change::Refund(RefundState::Refused { reason: None }),
                Change::Order(OrderEvent::RefundRefused {
                    refund_id: refund.clone(),
                }),
            ],
        ),
        (
            all()[3].clone(),
            OrderState::Cancelled,
            StepOutcome::StockReleased { already: true },
            vec![Change::StockReleased],
        ),
        (
            all()[4].clone(),
            OrderState::PendingPay,
            StepOutcome::Custom {
                value: serde_json::json!(1),
            },
            vec![],
        ),
    ];
    for (action, order, outcome, want) in cases {
        assert_eq!(
            action.kind().fold(&order, &outcome),
            Ok(want),
            "{} × {outcome:?}",
            action.name()
        );
    }
    // A release answered by "cancelled" does not fit.
    let err = all()[3]
        .kind()
        .fold(
            &OrderState::Cancelled,
            &StepOutcome::Cancelled { already: false },
        )
        .unwrap_err();
    assert!(
        err.contains("does not answer action release_stock"),
        "{err}"
    );
}

#[test]
fn what_an_operators_applied_stands_for() {
    let by = OperatorApplied::default();
    assert_eq!(
        all()[0].kind().applied(&by),
        Ok(StepOutcome::Cancelled { already: false })
    );
    let err = all()[1].kind().applied(&by).unwrap_err();
    assert!(err.contains("--refund-id"), "{err}");
    let with = OperatorApplied {
        refund_id: Some(RefundId::from("R9")),
        value: None,
    };
    assert_eq!(
        all()[1].kind().applied(&with),
        Ok(StepOutcome::RefundOpened {
            refund_id: RefundId::from("R9")
        })
    );
    assert_eq!(
        all()[3].kind().applied(&by),
        Ok(StepOutcome::StockReleased { already: false })
    );
}

struct Numeric;

#[async_trait]
impl CancelOrder for Numeric {
    async fn cancel_unpaid(&self, _: &CancelRequest) -> Result<CancelOutcome, ChannelError> {
        Ok(CancelOutcome { already: false })
    }
    async fn cancel_paid(&self, _: &CancelRequest) -> Result<RefundOpened, ChannelError> {
        Err(ChannelError::not_applied("unused"))
    }
    fn check_order_id(&self, id: &str) -> Result<(), String> {
        check_decimal_u64(id)
    }
}

#[async_trait]
impl ReleaseStockTrait for Numeric {
    async fn release_stock(
        &self,
        _: &StockLockRef,
        _account: Option<&crate::ids::AccountId>,
    ) -> Result<(), ChannelError> {
        Ok(())
    }
}

#[test]
fn checks_name_the_field_the_value_and_what_is_configured() {
    let channels = Channels::new()
        .with_cancel("tbc", Arc::new(Numeric))
        .with_stock("damai", Arc::new(Numeric));
    let release = |ch: &str| {
        Action::ReleaseStock(ReleaseStock {
            lock: StockLockRef::new(ch, "L1"),
        })
    };
    assert_eq!(release("damai").kind().check(&channels), Ok(()));
    let e = release("damia").kind().check(&channels).unwrap_err();
    assert_eq!(
        e.to_string(),
        "stock_lock.channel `damia` is not configured for stock release; configured: damai"
    );
    let cancel = |id: &str| {
        Action::CancelUnpaid(CancelUnpaid {
            order: OrderRef::new("tbc", id),
        })
    };
    assert_eq!(cancel("1001").kind().check(&channels), Ok(()));
    for (id, why) in [
        ("", "is empty"),
        ("18446744073709551616", "is out of range"),
        ("007", "has leading zeros"),
        ("12a", "is not a decimal number"),
        ("1\r\n2", "contains control characters"),
    ] {
        let e = cancel(id).kind().check(&channels).unwrap_err();
        assert_eq!(e.field, "order_id");
        assert!(e.reason.starts_with(why), "{id:?}: {e}");
    }
    let e = Action::WithdrawRefund(WithdrawRefund {
        order: order(),
        refund_id: RefundId::from("R1"),
    })
    .kind()
    .check(&channels)
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "channel `tbc` is not configured for refund withdraw; configured: none"
    );
}
