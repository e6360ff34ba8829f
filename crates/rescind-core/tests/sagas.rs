//! Each built-in saga against the scripted upstream: happy paths, retries,
//! rate-limit waits, permanent failures, AlreadyDone, paid-meanwhile, abort
//! with compensation, lost replies, stuck sagas and a custom saga.

mod common;

use common::*;
use rescind_core::*;
use std::sync::Arc;
use std::time::Duration;

fn completed(exit: &SagaExit) -> OrderState {
    match exit {
        SagaExit::Finished(SagaOutcome::Completed { order, .. }) => order.clone(),
        other => panic!("expected Completed, got {other:?}"),
    }
}

async fn records(j: &MemoryJournal, id: SagaId) -> Vec<Record> {
    j.read(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.record)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn cancel_unpaid_happy_path_with_stock_release() {
    let up = Upstream::new();
    up.order("O1", OrderState::PendingPay).lock("L1");
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 1);
    let input =
        SagaInput::cancel_unpaid(order("O1")).with_stock_lock(StockLockRef::new("damai", "L1"));
    let (id, exit) = e.run(input).await.unwrap();
    assert_eq!(completed(&exit), OrderState::Cancelled);
    assert_eq!(up.effects(), vec!["cancel_unpaid:O1", "release_stock:L1"]);
    assert_eq!(up.lock_released("L1"), Some(true));
    let names: Vec<&str> = records(&j, id).await.iter().map(|r| r.name()).collect();
    assert_eq!(
        names,
        ["started", "intent", "outcome", "intent", "outcome", "finished"]
    );
    assert_eq!(j.list(SagaSet::Finished).await.unwrap(), vec![id]);
    assert!(j.list(SagaSet::Unfinished).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn retryable_errors_then_success() {
    let up = Upstream::new();
    up.order("O1", OrderState::PendingPay);
    up.script([
        Fault::Err(ChannelError::not_applied("connection refused")),
        Fault::Err(ChannelError::not_applied("connection refused")),
    ]);
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 2);
    let (id, exit) = e.run(SagaInput::cancel_unpaid(order("O1"))).await.unwrap();
    assert_eq!(completed(&exit), OrderState::Cancelled);
    assert_eq!(up.effects(), vec!["cancel_unpaid:O1"]);
    assert_eq!(e.stats().retries, 2);
    let attempts = records(&j, id).await.iter().find_map(|r| match r {
        Record::Outcome { attempts, .. } => Some(*attempts),
        _ => None,
    });
    assert_eq!(attempts, Some(3));
}

#[tokio::test(start_paused = true)]
async fn rate_limit_wait_is_honoured() {
    let up = Upstream::new();
    up.order("O1", OrderState::PendingPay);
    up.script([Fault::Err(ChannelError::rate_limited(
        Some(Duration::from_secs(30)),
        "This ban will last for 30 more seconds",
    ))]);
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 3);
    let t0 = e.clock().now_ms();
    let (_, exit) = e.run(SagaInput::cancel_unpaid(order("O1"))).await.unwrap();
    let waited = e.clock().now_ms() - t0;
    assert_eq!(completed(&exit), OrderState::Cancelled);
    assert!(waited >= 30_000, "waited only {waited} ms");
    assert!(waited < 40_000, "waited {waited} ms, far beyond the ban");
}

#[tokio::test(start_paused = true)]
async fn permanent_failure_ends_failed_with_reason() {
    let up = Upstream::new();
    up.order("O1", OrderState::PendingPay);
    up.script([Fault::Err(
        ChannelError::permanent(PermanentReason::InvalidRequest, "非法参数")
            .with_codes(Some("50".into()), Some("isv.invalid-parameter".into())),
    )]);
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 4);
    let (_, exit) = e.run(SagaInput::cancel_unpaid(order("O1"))).await.unwrap();
    match exit {
        SagaExit::Finished(SagaOutcome::Failed { reason }) => {
            assert!(
                reason.contains("isv.invalid-parameter") && reason.contains("cancel_unpaid"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(up.effects().is_empty());
}

#[tokio::test(start_paused = true)]
async fn already_done_counts_as_success() {
    let up = Upstream::new();
    up.order("O1", OrderState::Cancelled);
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 5);
    let (id, exit) = e.run(SagaInput::cancel_unpaid(order("O1"))).await.unwrap();
    assert_eq!(completed(&exit), OrderState::Cancelled);
    assert!(up.effects().is_empty(), "nothing applied twice");
    assert!(records(&j, id).await.iter().any(|r| matches!(
        r,
        Record::Outcome {
            outcome: StepOutcome::Cancelled { already: true },
            ..
        }
    )));
}

#[tokio::test(start_paused = true)]
async fn paid_meanwhile_switches_to_cancel_paid() {
    let up = Upstream::new();
    up.order("O1", OrderState::PendingPay).lock("L1");
    up.script([Fault::PayFirst]);
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 6);
    let input =
        SagaInput::cancel_unpaid(order("O1")).with_stock_lock(StockLockRef::new("damai", "L1"));
    let (id, exit) = e.run(input).await.unwrap();
    assert_eq!(
        completed(&exit),
        OrderState::Refunded {
            refund_id: RefundId("R1".into())
        }
    );
    assert_eq!(up.effects(), vec!["cancel_paid:O1", "release_stock:L1"]);
    let recs = records(&j, id).await;
    assert!(recs
        .iter()
        .any(|r| matches!(r, Record::Switched { to, .. } if to.as_str() == "cancel_paid")));
    assert!(recs
        .iter()
        .any(|r| matches!(r, Record::Observed { via: Via::Poll, .. })));
}

#[tokio::test(start_paused = true)]
async fn cancel_paid_completed_by_delivered_event_not_polling() {
    let up = Upstream::new();
    up.order("O1", OrderState::Paid);
    up.book.lock().unwrap().refunds_never_complete = true;
    let j = MemoryJournal::new();
    let e = Engine::builder(Arc::new(j.clone()))
        .channels(up.channels("tbc"))
        .limits(Limits {
            refund_poll_initial_ms: 3_600_000,
            ..fast_limits()
        })
        .build();
    let id = e.start(SagaInput::cancel_paid(order("O1"))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(e.is_running(id));
    // A stale, non-final and a foreign event first: ignored.
    let mk = |rid: &str, state: RefundState| Observation::Refund {
        order: order("O1"),
        refund_id: RefundId(rid.into()),
        status: RefundStatus {
            upstream: state.name().into(),
            state,
        },
    };
    assert_eq!(e.deliver(mk("R1", RefundState::Requested)), 1);
    assert_eq!(e.deliver(mk("R9", RefundState::Completed)), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(e.is_running(id));
    // A forged completion (the refund is still open upstream) is not
    // confirmed by the lookup the engine makes before acting: ignored.
    e.deliver(mk("R1", RefundState::Completed));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(e.is_running(id), "a callback alone never finishes a saga");
    // The refund really completes upstream; its callback is confirmed.
    up.book.lock().unwrap().refunds_never_complete = false;
    e.deliver(mk("R1", RefundState::Completed));
    e.deliver(mk("R1", RefundState::Completed)); // duplicate push
    let exit = e.wait(id).await.unwrap();
    assert_eq!(
        completed(&exit),
        OrderState::Refunded {
            refund_id: RefundId("R1".into())
        }
    );
    assert!(records(&j, id).await.iter().any(|r| matches!(
        r,
        Record::Observed {
            via: Via::Callback,
            ..
        }
    )));
    assert_eq!(
        up.book
            .lock()
            .unwrap()
            .polls
            .get("R1")
            .copied()
            .unwrap_or(0),
        2,
        "no poll happened: one confirming lookup per terminal callback"
    );
}

#[tokio::test(start_paused = true)]
async fn withdraw_refund_happy_and_too_late() {
    let up = Upstream::new();
    up.order(
        "O1",
        OrderState::Refunding {
            refund_id: RefundId("R7".into()),
        },
    );
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 7);
    let (_, exit) = e
        .run(SagaInput::withdraw_refund(
            order("O1"),
            RefundId("R7".into()),
        ))
        .await
        .unwrap();
    assert_eq!(completed(&exit), OrderState::Paid);
    assert_eq!(up.effects(), vec!["withdraw_refund:R7"]);

    let up = Upstream::new();
    up.order(
        "O2",
        OrderState::Refunding {
            refund_id: RefundId("R8".into()),
        },
    );
    up.book.lock().unwrap().orders.get_mut("O2").unwrap().refund =
        Some((RefundId("R8".into()), RefundState::Completed));
    let e = engine_on(&MemoryJournal::new(), &up, 8);
    let (_, exit) = e
        .run(SagaInput::withdraw_refund(
            order("O2"),
            RefundId("R8".into()),
        ))
        .await
        .unwrap();
    match exit {
        SagaExit::Finished(SagaOutcome::Failed { reason }) => {
            assert!(reason.contains("already completed"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn abort_cancel_paid_withdraws_the_opened_refund() {
    let up = Upstream::new();
    up.order("O1", OrderState::Paid);
    up.book.lock().unwrap().refunds_never_complete = true;
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 9);
    let id = e.start(SagaInput::cancel_paid(order("O1"))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(up.effects(), vec!["cancel_paid:O1"]);
    e.abort(id, "customer changed their mind").await.unwrap();
    let exit = e.wait(id).await.unwrap();
    assert_eq!(
        exit,
        SagaExit::Finished(SagaOutcome::Aborted {
            compensated: true,
            reason: "customer changed their mind".into()
        })
    );
    assert_eq!(up.effects(), vec!["cancel_paid:O1", "withdraw_refund:R1"]);
    assert_eq!(up.state("O1").unwrap().state, OrderState::Paid);
    // Aborting a finished saga is a typed error.
    assert!(matches!(
        e.abort(id, "again").await,
        Err(Error::AlreadyFinished { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn abort_of_a_saga_not_running_is_journaled_and_carried_out() {
    let up = Upstream::new();
    up.order("O1", OrderState::Paid);
    up.book.lock().unwrap().refunds_never_complete = true;
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 10);
    let id = e.start(SagaInput::cancel_paid(order("O1"))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    e.kill();
    let e2 = engine_on(&j.restart(), &up, 11);
    e2.abort(id, "ops").await.unwrap();
    let exit = e2.wait(id).await.unwrap();
    assert!(
        matches!(
            exit,
            SagaExit::Finished(SagaOutcome::Aborted {
                compensated: true,
                ..
            })
        ),
        "{exit:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn lost_reply_is_resolved_by_lookup_without_a_second_cancel() {
    let up = Upstream::new();
    up.order("O1", OrderState::PendingPay);
    up.script([Fault::Lose]);
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 12);
    let (id, exit) = e.run(SagaInput::cancel_unpaid(order("O1"))).await.unwrap();
    assert_eq!(completed(&exit), OrderState::Cancelled);
    assert_eq!(up.effect_counts().get("cancel_unpaid:O1"), Some(&1));
    assert_eq!(
        up.book.lock().unwrap().calls,
        1,
        "the cancel was not re-issued"
    );
    assert!(records(&j, id).await.iter().any(|r| matches!(
        r,
        Record::Outcome {
            via: Via::Lookup,
            ..
        }
    )));
    assert_eq!(e.stats().resolved_by_lookup, 1);
}

#[tokio::test(start_paused = true)]
async fn endless_retryable_failure_parks_the_saga_as_stuck() {
    let up = Upstream::new();
    up.order("O1", OrderState::PendingPay);
    up.script((0..100).map(|_| Fault::Err(ChannelError::not_applied("503"))));
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 13);
    let (id, exit) = e.run(SagaInput::cancel_unpaid(order("O1"))).await.unwrap();
    match &exit {
        SagaExit::Stuck { reason } => assert!(
            reason.contains("gave up after 8 tries") && reason.contains("503"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(j.list(SagaSet::Unfinished).await.unwrap(), vec![id]);
    let st = e.load(id).await.unwrap();
    assert!(st.stuck.is_some());
    // The operator fixes the cause and resumes.
    up.book.lock().unwrap().script.clear();
    // Its intent has no outcome, so the resumed step is in doubt: looked up first.
    assert!(e.resume(id).await.unwrap());
    assert_eq!(completed(&e.wait(id).await.unwrap()), OrderState::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn shipped_order_fails_with_reason() {
    let up = Upstream::new();
    up.order("O1", OrderState::Paid);
    up.ship("O1");
    let e = engine_on(&MemoryJournal::new(), &up, 14);
    let (_, exit) = e.run(SagaInput::cancel_paid(order("O1"))).await.unwrap();
    match exit {
        SagaExit::Finished(SagaOutcome::Failed { reason }) => {
            assert!(reason.contains("shipped"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn bad_starts_are_typed_errors() {
    let up = Upstream::new();
    let e = engine_on(&MemoryJournal::new(), &up, 15);
    match e
        .start(SagaInput::custom(
            "nope",
            order("O1"),
            serde_json::Value::Null,
        ))
        .await
    {
        Err(Error::UnknownSagaKind { kind, .. }) => assert_eq!(kind.as_str(), "nope"),
        other => panic!("{other:?}"),
    }
    match e
        .start(SagaInput::cancel_paid(order("O1")).with_order_state(OrderState::PendingPay))
        .await
    {
        Err(e @ Error::InvalidInput { .. }) => assert!(
            e.to_string().contains("needs an order in state Paid"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
}

/// A user-defined saga: two custom steps through a registered executor.
struct TwoPosts;

impl SagaDefinition for TwoPosts {
    fn kind(&self) -> SagaKind {
        SagaKind("two_posts".into())
    }
    fn decide(&self, s: &SagaState) -> Decision {
        let done = s.steps.iter().filter(|st| st.outcome.is_some()).count();
        if done < 2 {
            Decision::Act(Action::Custom(rescind_core::action::Custom {
                name: "post".into(),
                payload: serde_json::json!({ "n": done }),
            }))
        } else {
            Decision::Finish(SagaOutcome::Completed {
                order: s.order.clone(),
                note: Some("posted twice".into()),
            })
        }
    }
}

struct Post(std::sync::Mutex<Vec<u64>>);

#[async_trait::async_trait]
impl StepExecutor for Post {
    async fn execute(
        &self,
        payload: &serde_json::Value,
    ) -> Result<serde_json::Value, ChannelError> {
        let n = payload["n"].as_u64().unwrap_or(99);
        self.0.lock().unwrap().push(n);
        Ok(serde_json::json!({ "posted": n }))
    }
}

#[tokio::test(start_paused = true)]
async fn custom_saga_runs_on_the_same_engine() {
    let exec = Arc::new(Post(Default::default()));
    let j = MemoryJournal::new();
    let e = Engine::builder(Arc::new(j.clone()))
        .saga(TwoPosts)
        .executor("post", exec.clone())
        .build();
    let (id, exit) = e
        .run(SagaInput::custom(
            "two_posts",
            order("O1"),
            serde_json::Value::Null,
        ))
        .await
        .unwrap();
    assert!(matches!(
        exit,
        SagaExit::Finished(SagaOutcome::Completed { .. })
    ));
    assert_eq!(*exec.0.lock().unwrap(), vec![0, 1]);
    assert_eq!(records(&j, id).await.len(), 6);
}

#[tokio::test(start_paused = true)]
async fn keyed_start_is_idempotent() {
    let up = Upstream::new();
    up.order("O1", OrderState::PendingPay);
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 16);
    let (a, fresh_a) = e
        .start_keyed(
            "backend-order-O1-cancel",
            SagaInput::cancel_unpaid(order("O1")),
        )
        .await
        .unwrap();
    let (b, fresh_b) = e
        .start_keyed(
            "backend-order-O1-cancel",
            SagaInput::cancel_unpaid(order("O1")),
        )
        .await
        .unwrap();
    assert_eq!(a, b);
    assert!(fresh_a && !fresh_b);
    assert_eq!(completed(&e.wait(a).await.unwrap()), OrderState::Cancelled);
    let (c, fresh_c) = e
        .start_keyed(
            "backend-order-O1-cancel",
            SagaInput::cancel_unpaid(order("O1")),
        )
        .await
        .unwrap();
    assert_eq!((c, fresh_c), (a, false));
    assert_eq!(up.effects(), vec!["cancel_unpaid:O1"]);
    assert_eq!(
        j.list(SagaSet::Finished).await.unwrap().len()
            + j.list(SagaSet::Unfinished).await.unwrap().len(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_refund_wait_parks_the_saga_without_a_task() {
    let up = Upstream::new();
    up.order("O1", OrderState::Paid);
    up.book.lock().unwrap().refunds_never_complete = true;
    let j = MemoryJournal::new();
    let e = Engine::builder(Arc::new(j.clone()))
        .channels(up.channels("tbc"))
        .limits(Limits {
            refund_poll_initial_ms: 60_000,
            refund_poll_max_ms: 600_000,
            ..fast_limits()
        })
        .build();
    let id = e.start(SagaInput::cancel_paid(order("O1"))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let st = e.stats();
    assert_eq!(
        (st.running, st.parked),
        (1, 1),
        "waiting 60 s for a poll: parked"
    );
    assert!(
        e.is_running(id),
        "a parked saga keeps its slot: recovery leaves it alone"
    );
    assert_eq!(e.recover().await.unwrap().already_running, 1);
    // The timer wakes it for each poll (60 s, then 120 s, ...), and it parks again.
    tokio::time::sleep(Duration::from_secs(200)).await;
    assert_eq!(
        up.book.lock().unwrap().polls.get("R1").copied(),
        Some(2),
        "polled at 60 s and 180 s"
    );
    assert_eq!(e.stats().parked, 1);
    // News wakes it at once; the refund completes.
    up.book.lock().unwrap().refunds_never_complete = false;
    let done = Observation::Refund {
        order: order("O1"),
        refund_id: RefundId("R1".into()),
        status: RefundStatus {
            state: RefundState::Completed,
            upstream: "SUCCESS".into(),
        },
    };
    assert_eq!(e.deliver(done), 1);
    let exit = e.wait(id).await.unwrap();
    assert_eq!(
        completed(&exit),
        OrderState::Refunded {
            refund_id: RefundId("R1".into())
        }
    );
    assert_eq!(e.stats().parked, 0);
    assert!(records(&j, id).await.iter().any(|r| matches!(
        r,
        Record::Observed {
            via: Via::Callback,
            ..
        }
    )));
}
