//! Crash at every journal record boundary of every built-in saga — before the
//! append, after the write but before the flush, after the flush — and right
//! after upstream applied each effect; then drop the engine and the
//! non-durable records, build a new engine on the same journal, recover.
//! Each run must end in the same terminal state as the run with no crash, and
//! the upstream must have seen each effect at most once. A second crash during
//! recovery is exercised at every point too.
//!
//! The owed-work scenarios refuse the stock release (after the irreversible
//! cancel) permanently until an operator, seeing the saga parked stuck with
//! the expected reason, lifts the refusal and resumes it once. No run may end
//! `failed` with the lock held.

mod common;

use async_trait::async_trait;
use common::*;
use rescind_core::engine::Protections;
use rescind_core::*;
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug)]
enum Scenario {
    CancelUnpaid,
    CancelUnpaidPaidMeanwhile,
    CancelPaid,
    WithdrawRefund,
    /// Cancel unpaid; the release is refused for credentials until fixed.
    CancelUnpaidReleaseAuth,
    /// Cancel paid (the refund completes); the release is refused permanently.
    CancelPaidReleaseRefused,
}

const SCENARIOS: [Scenario; 6] = [
    Scenario::CancelUnpaid,
    Scenario::CancelUnpaidPaidMeanwhile,
    Scenario::CancelPaid,
    Scenario::WithdrawRefund,
    Scenario::CancelUnpaidReleaseAuth,
    Scenario::CancelPaidReleaseRefused,
];

impl Scenario {
    /// The refusal every release meets until the operator lifts it, and the
    /// words the stuck reason must carry.
    fn release_refusal(self) -> Option<(ChannelError, &'static str)> {
        match self {
            Scenario::CancelUnpaidReleaseAuth => Some((
                ChannelError::permanent(PermanentReason::Auth, "invalid signature")
                    .with_codes(Some("25".into()), None),
                "credentials:",
            )),
            Scenario::CancelPaidReleaseRefused => Some((
                ChannelError::permanent(PermanentReason::InvalidRequest, "invalid arguments")
                    .with_codes(Some("41".into()), None),
                "work still owed",
            )),
            _ => None,
        }
    }
}

/// The stock channel in front of the scripted upstream: refuses every
/// release with `refusal` while it is set (the fault an operator fixes).
struct Gate {
    up: Upstream,
    refusal: Mutex<Option<ChannelError>>,
}

#[async_trait]
impl ReleaseStock for Gate {
    async fn release_stock(
        &self,
        lock: &StockLockRef,
        account: Option<&rescind_core::AccountId>,
    ) -> Result<(), ChannelError> {
        let refusal = self.refusal.lock().unwrap().clone();
        match refusal {
            Some(e) => Err(e),
            None => self.up.release_stock(lock, account).await,
        }
    }
}

fn engine_for(
    journal: &MemoryJournal,
    up: &Upstream,
    gate: &Arc<Gate>,
    seed: u64,
    protections: Protections,
) -> Engine {
    let me = Arc::new(up.clone());
    let channels = Channels::new()
        .with_cancel("tbc", me.clone())
        .with_refund("tbc", me.clone())
        .with_lookup("tbc", me)
        .with_stock("damai", gate.clone());
    Engine::builder(Arc::new(journal.clone()))
        .channels(channels)
        .clock(Arc::new(TokioClock::with_base(1_700_000_000_000)))
        .rng(Arc::new(SplitMix64::new(seed)))
        .ids(Arc::new(SeededIds::new(seed)))
        .limits(fast_limits())
        .protections(protections)
        .build()
}

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
        Scenario::CancelPaid | Scenario::CancelPaidReleaseRefused => {
            up.order("O1", OrderState::Paid);
            SagaInput::cancel_paid(order("O1")).with_stock_lock(lock)
        }
        Scenario::CancelUnpaidReleaseAuth => {
            up.order("O1", OrderState::PendingPay);
            SagaInput::cancel_unpaid(order("O1")).with_stock_lock(lock)
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
    /// Resumes the operator made (owed-work scenarios: exactly one).
    resumes: u32,
}

/// Run a scenario; `crashes` are applied one per process life (the second
/// lands during recovery). Returns the end state and the appends of life 1.
async fn run(
    s: Scenario,
    crashes: &[(u64, CrashPoint)],
    crash_after_apply: Option<usize>,
) -> (End, Upstream, u64) {
    run_with(s, crashes, crash_after_apply, Protections::default()).await
}

async fn run_with(
    s: Scenario,
    crashes: &[(u64, CrashPoint)],
    crash_after_apply: Option<usize>,
    protections: Protections,
) -> (End, Upstream, u64) {
    let (up, input) = setup(s);
    let gate = Arc::new(Gate {
        up: up.clone(),
        refusal: Mutex::new(s.release_refusal().map(|(e, _)| e)),
    });
    let engine_on =
        |j: &MemoryJournal, up: &Upstream, life: u64| engine_for(j, up, &gate, life, protections);
    let mut resumes = 0;
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
    loop {
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
        // The operator: a saga parked stuck by the release refusal gets the
        // refusal lifted and one resume; stuck again after that is a failure.
        let (Some(sid), Some((_, words))) = (id, s.release_refusal()) else {
            break;
        };
        let state = engine.load(sid).await.expect("saga readable");
        let Some(reason) = state.stuck.filter(|_| state.outcome.is_none()) else {
            break;
        };
        assert_eq!(
            resumes, 0,
            "{s:?} {crashes:?}: stuck again after the fix and a resume: {reason}"
        );
        assert!(
            reason.contains(words),
            "{s:?}: parked for {reason:?}, expected {words:?}"
        );
        *gate.refusal.lock().unwrap() = None;
        resumes += 1;
        if engine.resume(sid).await.is_ok() {
            let _ = engine.wait(sid).await;
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
        resumes,
    };
    if s.release_refusal().is_some() && !protections.fail_with_work_owed {
        assert_eq!(
            resumes, 1,
            "{s:?} {crashes:?}: the refusal never parked the saga"
        );
    }
    (end, up, first_life_appends.max(journal.appends()))
}

/// No half-cancel: a saga that ended `failed` after its cancel was applied
/// upstream must not leave the stock lock held (nor, after a paid cancel,
/// the refund it opened open).
fn no_half_cancel(up: &Upstream, end: &End) -> Result<(), String> {
    if !matches!(end.outcome, SagaOutcome::Failed { .. }) {
        return Ok(());
    }
    let cancelled = up
        .effects()
        .iter()
        .any(|e| e.starts_with("cancel_unpaid:O1") || e.starts_with("cancel_paid:O1"));
    if cancelled && end.lock_released == Some(false) {
        return Err(format!(
            "ended {:?} after the cancel applied, with lock L1 still held",
            end.outcome
        ));
    }
    if cancelled && matches!(end.upstream.state, OrderState::Refunding { .. }) {
        return Err(format!(
            "ended {:?} with its refund still open",
            end.outcome
        ));
    }
    Ok(())
}

fn assert_at_most_once(up: &Upstream, ctx: &str) {
    for (effect, n) in up.effect_counts() {
        assert_eq!(n, 1, "{ctx}: effect {effect} applied {n} times");
    }
}

fn assert_no_half_cancel(up: &Upstream, end: &End, ctx: &str) {
    if let Err(e) = no_half_cancel(up, end) {
        panic!("{ctx}: {e}");
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
        assert_no_half_cancel(&up, &reference, &format!("{s:?} no crash"));
        assert!(appends >= 4, "{s:?}: {appends} appends");
        for k in 0..appends {
            for p in points {
                let ctx = format!("{s:?} crash at append {k} {p:?}");
                let (end, up, _) = run(s, &[(k, p)], None).await;
                assert_eq!(end, reference, "{ctx}");
                assert_at_most_once(&up, &ctx);
                assert_no_half_cancel(&up, &end, &ctx);
                runs += 1;
                // And a second crash at every point of the recovery.
                for k2 in 0..appends {
                    let ctx2 = format!("{ctx}, then at recovery append {k2} {p:?}");
                    let (end, up, _) = run(s, &[(k, p), (k2, p)], None).await;
                    assert_eq!(end, reference, "{ctx2}");
                    assert_at_most_once(&up, &ctx2);
                    assert_no_half_cancel(&up, &end, &ctx2);
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
            assert_eq!(end.resumes, reference.resumes, "{ctx}");
            assert_at_most_once(&up, &ctx);
            assert_no_half_cancel(&up, &end, &ctx);
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

#[tokio::test(start_paused = true)]
async fn owed_work_release_refused_parks_then_completes_after_one_resume() {
    for s in [
        Scenario::CancelUnpaidReleaseAuth,
        Scenario::CancelPaidReleaseRefused,
    ] {
        let (end, up, _) = run(s, &[], None).await;
        assert_eq!(end.resumes, 1, "{s:?}");
        assert!(
            matches!(end.outcome, SagaOutcome::Completed { .. }),
            "{s:?}: {:?}",
            end.outcome
        );
        assert_eq!(end.lock_released, Some(true), "{s:?}");
        assert_eq!(
            up.effect_counts().get("release_stock:L1"),
            Some(&1),
            "{s:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn failing_with_work_owed_is_caught() {
    // Proof that the owed-work cases above can fail: with the protection off,
    // the refused release ends the paid cancel failed with L1 held, at no
    // crash and after a crash alike.
    let broken = Protections {
        fail_with_work_owed: true,
        ..Protections::default()
    };
    for crashes in [vec![], vec![(2, CrashPoint::AfterFlush)]] {
        let (end, up, _) =
            run_with(Scenario::CancelPaidReleaseRefused, &crashes, None, broken).await;
        let caught = no_half_cancel(&up, &end).expect_err("a half-cancel must be reported");
        assert!(caught.contains("lock L1 still held"), "{caught}");
        assert_eq!(end.resumes, 0);
    }
}
