//! The promise at the edges: input refused before the journal, keys bound to
//! their input, no `failed` with work owed, credentials that park, and an
//! operator's resolution of an in-doubt step.

mod common;

use common::*;
use rescind_core::engine::Protections;
use rescind_core::*;
use std::sync::Arc;

fn sid_of(key: &str) -> SagaId {
    SagaId::from_key(key)
}

fn auth_error() -> ChannelError {
    ChannelError::permanent(PermanentReason::Auth, "Invalid signature")
        .with_codes(Some("25".into()), None)
}

fn lock_ref(id: &str) -> StockLockRef {
    StockLockRef::new("damai", id)
}

async fn stuck_reason(e: &Engine, id: SagaId) -> String {
    match e.wait(id).await.unwrap() {
        SagaExit::Stuck { reason } => reason,
        other => panic!("expected stuck, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_unconfigured_channel_is_refused_before_anything_is_journaled() {
    let up = Upstream::new();
    up.order("1", OrderState::PendingPay).lock("L1");
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 1);
    let typo =
        SagaInput::cancel_unpaid(order("1")).with_stock_lock(StockLockRef::new("damia", "L1"));
    match e.start(typo).await {
        Err(Error::Rejected(err)) => {
            assert_eq!(err.field, "stock_lock.channel");
            assert_eq!(
                err.to_string(),
                "stock_lock.channel `damia` is not configured for stock release; configured: damai"
            );
        }
        other => panic!("{other:?}"),
    }
    let wrong = SagaInput::cancel_unpaid(OrderRef::new("tmal", "1"));
    assert!(matches!(e.start(wrong).await, Err(Error::Rejected(_))));
    assert!(j.list(SagaSet::Unfinished).await.unwrap().is_empty());
    assert!(j.list(SagaSet::Finished).await.unwrap().is_empty());
    assert!(up.effects().is_empty(), "nothing upstream");
}

#[tokio::test(start_paused = true)]
async fn a_key_is_bound_to_its_input() {
    let up = Upstream::new();
    up.order("1", OrderState::PendingPay)
        .order("2", OrderState::PendingPay)
        .lock("L99");
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 2);
    let input = SagaInput::cancel_unpaid(order("1"));
    let (id, created) = e.start_keyed("k1", input.clone()).await.unwrap();
    assert!(created);
    e.wait(id).await.unwrap();
    // The same key and input: the same saga, nothing new.
    assert_eq!(
        e.start_keyed("k1", input.clone()).await.unwrap(),
        (id, false)
    );
    // Another order, or the same order with a stock lock: a conflict naming the fields.
    match e
        .start_keyed("k1", SagaInput::cancel_unpaid(order("2")))
        .await
    {
        Err(Error::KeyConflict { saga, fields, .. }) => {
            assert_eq!(saga, id);
            assert_eq!(fields, vec!["order_id"]);
        }
        other => panic!("{other:?}"),
    }
    let more = input
        .clone()
        .with_stock_lock(lock_ref("L99"))
        .with_reason("x");
    let err = e.start_keyed("k1", more).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("with a different stock_lock, reason"),
        "{err}"
    );
    assert_eq!(
        j.read(sid_of("k1")).await.unwrap().len(),
        4,
        "nothing appended"
    );
    assert_eq!(up.lock_released("L99"), Some(false));
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_after_the_cancel_parks_the_saga_and_resume_finishes_it() {
    let up = Upstream::new();
    up.order("1", OrderState::PendingPay).lock("L1");
    // Cancel passes; the release is refused (a wrong Damai secret).
    up.script([Fault::Pass, Fault::Err(auth_error())]);
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 3);
    let id = e
        .start(SagaInput::cancel_unpaid(order("1")).with_stock_lock(lock_ref("L1")))
        .await
        .unwrap();
    let reason = stuck_reason(&e, id).await;
    assert!(
        reason.starts_with("credentials: the call of step 1 (release_stock)"),
        "{reason}"
    );
    assert_eq!(up.effects(), vec!["cancel_unpaid:1"]);
    let state = e.load(id).await.unwrap();
    assert!(state.outcome.is_none(), "never failed");
    assert_eq!(
        state.owed(),
        vec![Owed::ReleaseStock {
            lock: lock_ref("L1")
        }]
    );
    // A non-auth permanent error is parked too, with the work owed named.
    up.script([Fault::Err(ChannelError::permanent(
        PermanentReason::InvalidRequest,
        "lock id malformed",
    ))]);
    e.resume(id).await.unwrap();
    let reason = stuck_reason(&e, id).await;
    assert!(
        reason.contains("with work still owed (release stock lock damai:L1)"),
        "{reason}"
    );
    // The operator fixed it: resume releases the lock once and completes.
    e.resume(id).await.unwrap();
    match e.wait(id).await.unwrap() {
        SagaExit::Finished(SagaOutcome::Completed { order, .. }) => {
            assert_eq!(order, OrderState::Cancelled)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(up.effects(), vec!["cancel_unpaid:1", "release_stock:L1"]);
}

#[tokio::test(start_paused = true)]
async fn with_the_protection_off_the_same_saga_ends_failed_with_the_lock_held() {
    let up = Upstream::new();
    up.order("1", OrderState::PendingPay).lock("L1");
    up.script([Fault::Pass, Fault::Err(auth_error())]);
    let j = MemoryJournal::new();
    let e = Engine::builder(Arc::new(j.clone()))
        .channels(up.channels("tbc"))
        .clock(Arc::new(TokioClock::with_base(1_700_000_000_000)))
        .limits(fast_limits())
        .protections(Protections {
            fail_with_work_owed: true,
            ..Protections::default()
        })
        .build();
    let (_, exit) = e
        .run(SagaInput::cancel_unpaid(order("1")).with_stock_lock(lock_ref("L1")))
        .await
        .unwrap();
    // Auth failures still park (that is not this protection)...
    assert!(matches!(exit, SagaExit::Stuck { .. }), "{exit:?}");
    up.script([Fault::Err(ChannelError::permanent(
        PermanentReason::NotFound,
        "no such lock",
    ))]);
    let id = j.list(SagaSet::Unfinished).await.unwrap()[0];
    e.resume(id).await.unwrap();
    // ...but a permanent error with work owed ends `failed`: the half-cancel.
    match e.wait(id).await.unwrap() {
        SagaExit::Finished(SagaOutcome::Failed { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(up.lock_released("L1"), Some(false));
}

#[tokio::test(start_paused = true)]
async fn an_expired_session_on_the_first_step_parks_and_nothing_is_sent_twice() {
    let up = Upstream::new();
    up.order("1", OrderState::PendingPay);
    up.script([Fault::Err(
        ChannelError::permanent(PermanentReason::InvalidSession, "Invalid session")
            .with_codes(Some("27".into()), None),
    )]);
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 4);
    let id = e.start(SagaInput::cancel_unpaid(order("1"))).await.unwrap();
    let reason = stuck_reason(&e, id).await;
    assert!(
        reason.starts_with("credentials:") && reason.contains("code 27"),
        "{reason}"
    );
    assert!(up.effects().is_empty());
    e.resume(id).await.unwrap();
    assert!(matches!(
        e.wait(id).await.unwrap(),
        SagaExit::Finished(SagaOutcome::Completed { .. })
    ));
    assert_eq!(up.effects(), vec!["cancel_unpaid:1"]);
}

/// A saga whose cancel is in doubt on a gateway with no order lookup (an
/// operator must tell what happened).
async fn in_doubt_saga(up: &Upstream, j: &MemoryJournal) -> (Engine, SagaId) {
    up.order("1", OrderState::PendingPay).lock("L1");
    let mut lost = vec![Fault::Lose];
    lost.extend((0..30).map(|_| Fault::Err(ChannelError::not_applied("gateway down"))));
    up.script(lost);
    let me = Arc::new(up.clone());
    let no_lookup = Channels::new()
        .with_cancel("tbc", me.clone())
        .with_stock("damai", me);
    let e = Engine::builder(Arc::new(j.clone()))
        .channels(no_lookup)
        .clock(Arc::new(TokioClock::with_base(1_700_000_000_000)))
        .limits(Limits {
            attempts_max: 2,
            ..fast_limits()
        })
        .build();
    let id = e
        .start(SagaInput::cancel_unpaid(order("1")).with_stock_lock(lock_ref("L1")))
        .await
        .unwrap();
    let reason = stuck_reason(&e, id).await;
    assert!(
        reason.starts_with("step 0 (cancel_unpaid) gave up"),
        "{reason}"
    );
    assert_eq!(
        e.load(id).await.unwrap().in_doubt().map(|s| s.step),
        Some(0)
    );
    (e, id)
}

#[tokio::test(start_paused = true)]
async fn an_operator_resolves_an_in_doubt_step_as_applied() {
    let up = Upstream::new();
    let j = MemoryJournal::new();
    let (e, id) = in_doubt_saga(&up, &j).await;
    up.book.lock().unwrap().script.clear();
    // Refused for a step that is not in doubt.
    let wrong = Resolution {
        step: 3,
        applied: Some(OperatorApplied::default()),
        operator: "ana".into(),
        reason: "seller console shows it cancelled".into(),
    };
    let err = e.resolve(id, wrong.clone()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("step 3 is not in doubt; the step in doubt is step 0 (cancel_unpaid)"),
        "{err}"
    );
    e.resolve(id, Resolution { step: 0, ..wrong })
        .await
        .unwrap();
    match e.wait(id).await.unwrap() {
        SagaExit::Finished(SagaOutcome::Completed { order, .. }) => {
            assert_eq!(order, OrderState::Cancelled)
        }
        other => panic!("{other:?}"),
    }
    // The cancel was applied once (the lost reply); the release followed.
    assert_eq!(up.effects(), vec!["cancel_unpaid:1", "release_stock:L1"]);
    let state = e.load(id).await.unwrap();
    let note = state.steps[0].resolution.as_ref().unwrap();
    assert!(note.applied && note.operator == "ana");
    assert_eq!(state.steps[0].via, Some(Via::Operator));
    // Resolving again: the saga is finished.
    let again = Resolution {
        step: 0,
        applied: None,
        operator: "ana".into(),
        reason: "x".into(),
    };
    assert!(matches!(
        e.resolve(id, again).await,
        Err(Error::AlreadyFinished { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn an_operator_resolves_an_in_doubt_step_as_not_applied_and_it_is_re_issued() {
    let up = Upstream::new();
    let j = MemoryJournal::new();
    // The reply was lost *before* applying in this story: make it "not applied".
    up.order("1", OrderState::PendingPay).lock("L1");
    let mut faults = vec![Fault::Err(ChannelError::in_doubt("timeout"))];
    faults.extend((0..30).map(|_| Fault::Err(ChannelError::not_applied("gateway down"))));
    up.script(faults);
    let e = Engine::builder(Arc::new(j.clone()))
        .channels(up.channels("tbc"))
        .clock(Arc::new(TokioClock::with_base(1_700_000_000_000)))
        .limits(Limits {
            attempts_max: 2,
            ..fast_limits()
        })
        .build();
    let id = e
        .start(SagaInput::cancel_unpaid(order("1")).with_stock_lock(lock_ref("L1")))
        .await
        .unwrap();
    stuck_reason(&e, id).await;
    up.book.lock().unwrap().script.clear();
    let calls_before = up.book.lock().unwrap().calls;
    e.resolve(
        id,
        Resolution {
            step: 0,
            applied: None,
            operator: "ben".into(),
            reason: "order still open in the console".into(),
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        e.wait(id).await.unwrap(),
        SagaExit::Finished(SagaOutcome::Completed { .. })
    ));
    assert_eq!(up.effects(), vec!["cancel_unpaid:1", "release_stock:L1"]);
    // Re-issued without a lookup: exactly two calls (cancel, release).
    assert_eq!(up.book.lock().unwrap().calls - calls_before, 2);
    let records: Vec<Record> = j
        .read(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.record)
        .collect();
    assert!(records.iter().any(
        |r| matches!(r, Record::Resolved { outcome: None, operator, .. } if operator == "ben")
    ));
}

/// A channel that asks for a long wait (a TOP ban) does not hold the saga's
/// in-flight slot meanwhile: with one slot, another saga runs during the
/// wait; the waiting saga shows in `/stats` and its last error, then
/// finishes after the wait, sending nothing during it.
#[tokio::test(start_paused = true)]
async fn a_long_channel_wait_gives_the_in_flight_slot_back() {
    let up = Upstream::new();
    up.order("A", OrderState::PendingPay)
        .order("B", OrderState::PendingPay);
    up.script([Fault::Err(ChannelError::rate_limited(
        Some(std::time::Duration::from_secs(30)),
        "TOP app key 12129701 is banned for 30000 more ms",
    ))]);
    let j = MemoryJournal::new();
    let e = Engine::builder(Arc::new(j.clone()))
        .channels(up.channels("tbc"))
        .clock(Arc::new(TokioClock::with_base(1_700_000_000_000)))
        .limits(Limits {
            in_flight_max: 1,
            ..fast_limits()
        })
        .build();
    let t0 = e.clock().now_ms();
    let a = e.start(SagaInput::cancel_unpaid(order("A"))).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let s = e.stats();
    // Nothing was sent and the channel asked for the wait: the step is
    // deferred (journaled) and the saga parks, holding neither task nor slot.
    assert_eq!((s.parked, s.in_flight), (1, 0), "{s:?}");
    let b = e.start(SagaInput::cancel_unpaid(order("B"))).await.unwrap();
    assert!(matches!(
        e.wait(b).await.unwrap(),
        SagaExit::Finished(SagaOutcome::Completed { .. })
    ));
    assert!(
        e.clock().now_ms() - t0 < 5_000,
        "B ran during A's wait, not after it"
    );
    assert_eq!(
        up.effects(),
        ["cancel_unpaid:B"],
        "A sent nothing during its wait"
    );
    assert!(matches!(
        e.wait(a).await.unwrap(),
        SagaExit::Finished(SagaOutcome::Completed { .. })
    ));
    assert!(e.clock().now_ms() - t0 >= 30_000, "A honoured the wait");
    assert_eq!(e.stats().waiting_on_channel, 0);
    assert_eq!(up.effects(), ["cancel_unpaid:B", "cancel_unpaid:A"]);
}

#[tokio::test(start_paused = true)]
async fn a_deferred_step_survives_a_restart_and_is_sent_once_without_a_lookup() {
    let up = Upstream::new();
    up.order("A", OrderState::PendingPay);
    up.script([Fault::Err(ChannelError::rate_limited(
        Some(std::time::Duration::from_secs(30)),
        "TOP app key 12129701 is banned for 30000 more ms",
    ))]);
    let j = MemoryJournal::new();
    let build = || {
        Engine::builder(Arc::new(j.clone()))
            .channels(up.channels("tbc"))
            .clock(Arc::new(TokioClock::with_base(1_700_000_000_000)))
            .limits(fast_limits())
            .build()
    };
    let e = build();
    let t0 = e.clock().now_ms();
    let a = e.start(SagaInput::cancel_unpaid(order("A"))).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let records = j.read(a).await.unwrap();
    let until = records
        .iter()
        .find_map(|r| match &r.record {
            Record::Deferred {
                step: 0, until_ms, ..
            } => Some(*until_ms),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no deferred record: {records:?}"));
    assert!(until >= t0 + 30_000, "deferred to the ban's end");
    // The process dies during the deferral; a new one recovers the saga.
    e.kill();
    let e = build();
    let report = e.recover().await.unwrap();
    assert_eq!((report.resumed, report.in_doubt), (1, 0), "{report:?}");
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert!(up.effects().is_empty(), "nothing sent before the ban ends");
    assert_eq!(e.stats().parked, 1, "parked again after the restart");
    assert!(matches!(
        e.wait(a).await.unwrap(),
        SagaExit::Finished(SagaOutcome::Completed { .. })
    ));
    assert!(e.clock().now_ms() >= until, "the journaled wait was kept");
    assert_eq!(up.effects(), ["cancel_unpaid:A"], "sent once");
    let state = e.load(a).await.unwrap();
    assert_eq!(
        state.resolved_by_lookup, 0,
        "a deferred step is not looked up"
    );
    let names: Vec<&str> = j
        .read(a)
        .await
        .unwrap()
        .iter()
        .map(|r| r.record.name())
        .collect();
    assert_eq!(
        names,
        ["started", "intent", "deferred", "intent", "outcome", "finished"],
        "a fresh intent (write-ahead) before the send"
    );
}

#[tokio::test(start_paused = true)]
async fn an_account_is_passed_to_every_call_and_named_when_credentials_park() {
    let up = Upstream::new();
    up.order("1", OrderState::PendingPay).lock("L1");
    // The cancel goes through; the release is refused for credentials.
    up.script([Fault::Pass, Fault::Err(auth_error())]);
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 1);
    let input = SagaInput::cancel_unpaid(order("1"))
        .with_stock_lock(lock_ref("L1"))
        .with_account("shop-7");
    let id = e.start(input).await.unwrap();
    let reason = stuck_reason(&e, id).await;
    assert!(
        reason.starts_with("credentials: account shop-7: "),
        "{reason}"
    );
    assert_eq!(credentials_account(&reason), Some("shop-7"));
    assert_eq!(
        up.accounts_seen(),
        vec!["cancel_unpaid shop-7", "release_stock shop-7"]
    );
    // The account survives the journal: the folded input still names it.
    let state = e.load(id).await.unwrap();
    assert_eq!(state.input.account, Some(AccountId::from("shop-7")));
}

#[tokio::test(start_paused = true)]
async fn a_bad_account_id_is_refused_before_the_journal_and_keys_bind_the_account() {
    let up = Upstream::new();
    up.order("1", OrderState::PendingPay);
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 1);
    for (bad, why) in [
        ("", "is empty"),
        ("shop:7", "contains ':'"),
        (" shop", "blanks"),
    ] {
        match e
            .start(SagaInput::cancel_unpaid(order("1")).with_account(bad))
            .await
        {
            Err(Error::Rejected(err)) => {
                assert_eq!(err.field, "account");
                assert!(err.to_string().contains(why), "{err}");
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert!(j.list(SagaSet::Unfinished).await.unwrap().is_empty());
    let a = SagaInput::cancel_unpaid(order("1")).with_account("shop-1");
    let b = SagaInput::cancel_unpaid(order("1")).with_account("shop-2");
    e.start_keyed("k", a.clone()).await.unwrap();
    match e.start_keyed("k", b).await {
        Err(Error::KeyConflict { fields, .. }) => assert_eq!(fields, vec!["account"]),
        other => panic!("{other:?}"),
    }
    assert!(
        !e.start_keyed("k", a).await.unwrap().1,
        "the same key and input: no new saga"
    );
}
