//! Model tests: random event interleavings against a reference model of the
//! order machine, and random sagas with random transient faults and crashes
//! against a reference model of saga outcomes.

mod common;

use common::*;
use proptest::prelude::*;
use rescind_core::*;

// ---- the order machine against an independent reference -----------------

#[derive(Clone, Debug)]
enum Ev {
    Pay,
    Cancel,
    Open(u8),
    Complete(u8),
    Withdraw(u8),
    Refuse(u8),
}

fn to_event(e: &Ev) -> OrderEvent {
    let r = |n: &u8| RefundId(format!("R{n}"));
    match e {
        Ev::Pay => OrderEvent::PaymentConfirmed,
        Ev::Cancel => OrderEvent::CancelledUpstream,
        Ev::Open(n) => OrderEvent::RefundOpened { refund_id: r(n) },
        Ev::Complete(n) => OrderEvent::RefundCompleted { refund_id: r(n) },
        Ev::Withdraw(n) => OrderEvent::RefundWithdrawn { refund_id: r(n) },
        Ev::Refuse(n) => OrderEvent::RefundRefused { refund_id: r(n) },
    }
}

/// The reference: (state name, open refund) → next, written from DESIGN.md §2.
fn reference(state: (&'static str, Option<u8>), e: &Ev) -> Option<(&'static str, Option<u8>)> {
    match (state, e) {
        (("PendingPay", _), Ev::Pay) => Some(("Paid", None)),
        (("PendingPay", _), Ev::Cancel) => Some(("Cancelled", None)),
        (("Paid", _), Ev::Open(n)) => Some(("Refunding", Some(*n))),
        (("Refunding", Some(open)), Ev::Complete(n)) if open == *n => Some(("Refunded", Some(*n))),
        (("Refunding", Some(open)), Ev::Withdraw(n) | Ev::Refuse(n)) if open == *n => {
            Some(("Paid", None))
        }
        _ => None,
    }
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        Just(Ev::Pay),
        Just(Ev::Cancel),
        (0u8..3).prop_map(Ev::Open),
        (0u8..3).prop_map(Ev::Complete),
        (0u8..3).prop_map(Ev::Withdraw),
        (0u8..3).prop_map(Ev::Refuse),
    ]
}

proptest! {
    #[test]
    fn order_machine_matches_reference(events in proptest::collection::vec(ev(), 0..24)) {
        let order = OrderId("O".into());
        let mut state = OrderState::PendingPay;
        let mut model: (&'static str, Option<u8>) = ("PendingPay", None);
        for e in &events {
            let got = order_transition(&order, &state, &to_event(e));
            match reference(model, e) {
                Some(next) => {
                    let s = got.expect("reference allows this transition");
                    prop_assert_eq!(s.name(), next.0);
                    model = next;
                    state = s;
                }
                None => {
                    let err = got.expect_err("reference forbids this transition");
                    prop_assert_eq!(err.state, state.to_string());
                    prop_assert!(err.subject.contains('O'));
                }
            }
        }
    }
}

// ---- saga outcomes under faults and crashes -------------------------------

#[derive(Clone, Debug)]
enum Kind {
    Unpaid { pay_first: bool },
    Paid { shipped: bool },
    Withdraw { already_completed: bool },
}

#[derive(Clone, Debug)]
enum Transient {
    Refused,
    Lost,
    RateLimited(u64),
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        any::<bool>().prop_map(|pay_first| Kind::Unpaid { pay_first }),
        any::<bool>().prop_map(|shipped| Kind::Paid { shipped }),
        any::<bool>().prop_map(|already_completed| Kind::Withdraw { already_completed }),
    ]
}

fn transient() -> impl Strategy<Value = Transient> {
    prop_oneof![
        Just(Transient::Refused),
        Just(Transient::Lost),
        (1u64..60).prop_map(Transient::RateLimited),
    ]
}

fn crash() -> impl Strategy<Value = Option<(u64, CrashPoint)>> {
    proptest::option::of((
        0u64..8,
        prop_oneof![
            Just(CrashPoint::BeforeAppend),
            Just(CrashPoint::AfterWriteBeforeFlush),
            Just(CrashPoint::AfterFlush)
        ],
    ))
}

/// What the reference model predicts: outcome label and final upstream state.
fn predict(k: &Kind, lock: bool) -> (&'static str, &'static str, bool) {
    match k {
        Kind::Unpaid { pay_first: false } => ("completed", "Cancelled", lock),
        Kind::Unpaid { pay_first: true } => ("completed", "Refunded", lock),
        Kind::Paid { shipped: false } => ("completed", "Refunded", lock),
        Kind::Paid { shipped: true } => ("failed", "Paid", false),
        Kind::Withdraw {
            already_completed: false,
        } => ("completed", "Paid", false),
        Kind::Withdraw {
            already_completed: true,
        } => ("failed", "Refunded", false),
    }
}

async fn run_case(
    k: Kind,
    lock: bool,
    faults: Vec<Transient>,
    crash: Option<(u64, CrashPoint)>,
    seed: u64,
) -> (String, String, bool, Upstream) {
    let up = Upstream::new();
    up.lock("L1");
    let input = match &k {
        Kind::Unpaid { pay_first } => {
            up.order("O1", OrderState::PendingPay);
            if *pay_first {
                up.script([Fault::PayFirst]);
            }
            SagaInput::cancel_unpaid(order("O1"))
        }
        Kind::Paid { shipped } => {
            up.order("O1", OrderState::Paid);
            if *shipped {
                up.ship("O1");
            }
            SagaInput::cancel_paid(order("O1"))
        }
        Kind::Withdraw { already_completed } => {
            up.order(
                "O1",
                OrderState::Refunding {
                    refund_id: RefundId("R5".into()),
                },
            );
            if *already_completed {
                let mut b = up.book.lock().unwrap();
                let o = b.orders.get_mut("O1").unwrap();
                o.refund = Some((RefundId("R5".into()), RefundState::Completed));
                o.state = OrderState::Refunded {
                    refund_id: RefundId("R5".into()),
                };
            }
            SagaInput::withdraw_refund(order("O1"), RefundId("R5".into()))
        }
    };
    let input = if lock && !matches!(k, Kind::Withdraw { .. }) {
        input.with_stock_lock(StockLockRef::new("damai", "L1"))
    } else {
        input
    };
    up.script(faults.into_iter().map(|f| match f {
        Transient::Refused => Fault::Err(ChannelError::not_applied("connection refused")),
        Transient::Lost => Fault::Lose,
        Transient::RateLimited(s) => Fault::Err(ChannelError::rate_limited(
            Some(std::time::Duration::from_secs(s)),
            "ban",
        )),
    }));
    let j = MemoryJournal::new();
    if let Some((n, p)) = crash {
        j.crash_at(n, p);
    }
    let e = engine_on(&j, &up, seed);
    let mut id = e.start(input.clone()).await.ok();
    if let Some(id) = id {
        let _ = e.wait(id).await;
    }
    let mut j = j;
    let mut e = e;
    if j.is_crashed() {
        e.kill();
        j = j.restart();
        e = engine_on(&j, &up, seed + 1);
        let known = j.list(SagaSet::Unfinished).await.unwrap();
        let finished = j.list(SagaSet::Finished).await.unwrap();
        if known.is_empty() && finished.is_empty() {
            id = e.start(input).await.ok();
        } else {
            e.recover().await.unwrap();
            id = known.first().or(finished.first()).copied();
        }
        if let Some(id) = id {
            let _ = e.wait(id).await;
        }
    }
    let st = e.load(id.unwrap()).await.unwrap();
    let label = st
        .outcome
        .as_ref()
        .map(|o| o.label().to_string())
        .unwrap_or_else(|| format!("unfinished: {:?}", st.stuck));
    let upstream = up.state("O1").unwrap().state.name().to_string();
    let released = up.lock_released("L1").unwrap_or(false);
    (label, upstream, released, up)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, .. ProptestConfig::default() })]
    #[test]
    fn sagas_reach_the_model_outcome_under_faults_and_crashes(
        k in kind(),
        lock in any::<bool>(),
        faults in proptest::collection::vec(transient(), 0..4),
        crash in crash(),
        seed in any::<u64>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        let (label, upstream, released, up) = rt.block_on(run_case(k.clone(), lock, faults, crash, seed));
        let (want_label, want_state, want_released) = predict(&k, lock);
        prop_assert_eq!(label, want_label);
        prop_assert_eq!(upstream, want_state);
        prop_assert_eq!(released, want_released);
        for (effect, n) in up.effect_counts() {
            prop_assert_eq!(n, 1, "effect {} applied {} times", effect, n);
        }
    }
}
