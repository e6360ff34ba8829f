//! Crash at every journal record boundary of every built-in saga — before the
//! append, after the write but before the flush, after the flush — and right
//! after upstream applied each effect; then drop the engine and the
//! non-durable records, build a new engine on the same journal, recover.
//! Each run must end in the same terminal state as the run with no crash, and
//! the upstream must have seen each effect at most once. A second crash during
//! recovery is exercised at every point too.

mod common;

use common::*;
use rescind_core::*;

#[derive(Clone, Copy, Debug)]
enum Scenario {
    CancelUnpaid,
    CancelUnpaidPaidMeanwhile,
    CancelPaid,
    WithdrawRefund,
}

const SCENARIOS: [Scenario; 4] = [
    Scenario::CancelUnpaid,
    Scenario::CancelUnpaidPaidMeanwhile,
    Scenario::CancelPaid,
    Scenario::WithdrawRefund,
];

fn setup(s: Scenario) -> (Upstream, SagaInput) {
    let up = Upstream::new();
    up.lock("L1");
    up.book.lock().unwrap().refund_polls_before_complete = 1;
    let lock = StockLockRef::new("damai", "L1");
    let input = match s {
        Scenario::CancelUnpaid => {
            up.order("O1", OrderState::PendingPay);
            SagaInput::cancel_unpaid(order("O1")).with_stock_lock(lock)
        }
        Scenario::CancelUnpaidPaidMeanwhile => {
            up.order("O1", OrderState::PendingPay);
            up.script([Fault::PayFirst]);
            SagaInput::cancel_unpaid(order("O1")).with_stock_lock(lock)
        }
        Scenario::CancelPaid => {
            up.order("O1", OrderState::Paid);
            SagaInput::cancel_paid(order("O1")).with_stock_lock(lock)
        }
        Scenario::WithdrawRefund => {
            up.order(
                "O1",
                OrderState::Refunding {
                    refund_id: RefundId("R5".into()),
                },
            );
            SagaInput::withdraw_refund(order("O1"), RefundId("R5".into()))
        }
    };
    (up, input)
}

#[derive(Debug, PartialEq, Eq)]
struct End {
    outcome: SagaOutcome,
    upstream: UOrder,
    lock_released: Option<bool>,
}

/// Run a scenario; `crashes` are applied one per process life (the second
/// lands during recovery). Returns the end state and the appends of life 1.
async fn run(
    s: Scenario,
    crashes: &[(u64, CrashPoint)],
    crash_after_apply: Option<usize>,
) -> (End, Upstream, u64) {
    let (up, input) = setup(s);
    if let Some(n) = crash_after_apply {
        // Let the n-th mutating call apply its effect and then kill the process.
        let mut b = up.book.lock().unwrap();
        let mut script: Vec<Fault> = b.script.drain(..).collect();
        while script.len() <= n {
            script.push(Fault::Pass);
        }
        // A call the scenario scripts (the buyer pays first) keeps its fault;
        // the crash then lands on the next call.
        let at = (n..script.len())
            .find(|i| matches!(script[*i], Fault::Pass))
            .unwrap_or(script.len());
        if at == script.len() {
            script.push(Fault::Pass);
        }
        script[at] = Fault::CrashAfterApply;
        b.script = script.into();
    }
    let journal = MemoryJournal::new();
    if crash_after_apply.is_some() {
        up.crash_journal_after_apply(journal.clone());
    }
    let mut crashes = crashes.iter();
    if let Some((k, p)) = crashes.next() {
        journal.crash_at(*k, *p);
    }
    let mut engine = engine_on(&journal, &up, 1);
    let mut first_life_appends = 0;
    let mut id = engine.start(input.clone()).await.ok();
    if let Some(id) = id {
        let _ = engine.wait(id).await;
    }
    let mut life = 1;
    let mut j = journal.clone();
    while j.is_crashed() {
        if life == 1 {
            first_life_appends = j.appends();
        }
        engine.kill();
        life += 1;
        assert!(life < 10, "{s:?}: crash loop");
        j = j.restart();
        if let Some((k, p)) = crashes.next() {
            j.crash_at(*k, *p);
        }
        engine = engine_on(&j, &up, life);
        let known: Vec<SagaId> = [
            j.list(SagaSet::Unfinished).await,
            j.list(SagaSet::Finished).await,
        ]
        .into_iter()
        .flat_map(|r| r.unwrap_or_default())
        .collect();
        if known.is_empty() {
            // The Started record never became durable: the caller, who got an
            // error from start(), starts it again.
            id = engine.start(input.clone()).await.ok();
        } else {
            id = known.first().copied();
            if engine.recover().await.is_err() {
                continue;
            }
        }
        if let Some(id) = id {
            let _ = engine.wait(id).await;
        }
    }
    let id = id.expect("a saga exists");
    let state = engine.load(id).await.expect("saga readable");
    let outcome = state
        .outcome
        .clone()
        .unwrap_or_else(|| panic!("{s:?} {crashes:?}: saga not terminal: {state:?}"));
    let end = End {
        outcome,
        upstream: up.state("O1").unwrap(),
        lock_released: up.lock_released("L1"),
    };
    (end, up, first_life_appends.max(journal.appends()))
}

fn assert_at_most_once(up: &Upstream, ctx: &str) {
    for (effect, n) in up.effect_counts() {
        assert_eq!(n, 1, "{ctx}: effect {effect} applied {n} times");
    }
}

#[tokio::test(start_paused = true)]
async fn crash_at_every_record_boundary_ends_like_no_crash() {
    let points = [
        CrashPoint::BeforeAppend,
        CrashPoint::AfterWriteBeforeFlush,
        CrashPoint::AfterFlush,
    ];
    let mut runs = 0;
    for s in SCENARIOS {
        let (reference, up, appends) = run(s, &[], None).await;
        assert_at_most_once(&up, &format!("{s:?} no crash"));
        assert!(appends >= 4, "{s:?}: {appends} appends");
        for k in 0..appends {
            for p in points {
                let ctx = format!("{s:?} crash at append {k} {p:?}");
                let (end, up, _) = run(s, &[(k, p)], None).await;
                assert_eq!(end, reference, "{ctx}");
                assert_at_most_once(&up, &ctx);
                runs += 1;
                // And a second crash at every point of the recovery.
                for k2 in 0..appends {
                    let ctx2 = format!("{ctx}, then at recovery append {k2} {p:?}");
                    let (end, up, _) = run(s, &[(k, p), (k2, p)], None).await;
                    assert_eq!(end, reference, "{ctx2}");
                    assert_at_most_once(&up, &ctx2);
                    runs += 1;
                }
            }
        }
    }
    assert!(runs > 300, "only {runs} crash runs");
}

#[tokio::test(start_paused = true)]
async fn crash_right_after_upstream_applied_each_effect() {
    for s in SCENARIOS {
        let (reference, up, _) = run(s, &[], None).await;
        let effects = up.effects().len();
        assert!(effects >= 1);
        let calls = up.book.lock().unwrap().calls as usize;
        for n in 0..calls {
            let ctx = format!("{s:?} crash after mutating call {n} applied");
            let (end, up, _) = run(s, &[], Some(n)).await;
            assert_eq!(end.outcome, reference.outcome, "{ctx}");
            assert_eq!(end.upstream.state, reference.upstream.state, "{ctx}");
            assert_eq!(end.lock_released, reference.lock_released, "{ctx}");
            assert_at_most_once(&up, &ctx);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn disabling_the_in_doubt_lookup_is_caught() {
    // Proof that the checks above can fail: without the lookup, a lost reply to
    // a paid cancel is re-issued and a second refund request reaches upstream.
    let up = Upstream::new();
    up.order("O1", OrderState::Paid);
    up.script([Fault::Lose]);
    let j = MemoryJournal::new();
    let e = Engine::builder(std::sync::Arc::new(j.clone()))
        .channels(up.channels("tbc"))
        .limits(fast_limits())
        .protections(rescind_core::engine::Protections {
            skip_in_doubt_lookup: true,
            ..Default::default()
        })
        .build();
    let (_, _exit) = e.run(SagaInput::cancel_paid(order("O1"))).await.unwrap();
    let calls = up.book.lock().unwrap().calls;
    assert!(
        calls >= 2,
        "the paid cancel must have been re-issued blindly, saw {calls} calls"
    );
}
