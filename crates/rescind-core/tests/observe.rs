//! The saga-state hook (`EngineBuilder::observer`): finished, stuck and
//! unstuck are each told once, after they are durable, across a restart.

mod common;

use common::*;
use rescind_core::*;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Seen(Mutex<Vec<(SagaId, String)>>);

impl SagaObserver for Seen {
    fn saga_changed(&self, n: &SagaNotice<'_>) {
        let what = match n.change {
            SagaChange::Finished(o) => format!("finished:{}", o.label()),
            SagaChange::Stuck { reason } => {
                format!("stuck:{}", reason.split(' ').next().unwrap_or(""))
            }
            SagaChange::Unstuck => "unstuck".into(),
            _ => "other".into(),
        };
        assert_eq!(n.input.order.order_id.as_str(), "1");
        self.0.lock().unwrap().push((n.saga, what));
    }
}

impl Seen {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
            .into_iter()
            .map(|(_, w)| w)
            .collect()
    }
}

fn observed(j: &MemoryJournal, up: &Upstream, seen: &Arc<Seen>) -> Engine {
    Engine::builder(Arc::new(j.clone()))
        .channels(up.channels("tbc"))
        .clock(Arc::new(TokioClock::with_base(1_700_000_000_000)))
        .rng(Arc::new(SplitMix64::new(1)))
        .ids(Arc::new(SeededIds::new(1)))
        .limits(fast_limits())
        .observer(seen.clone())
        .build()
}

fn auth_error() -> ChannelError {
    ChannelError::permanent(PermanentReason::Auth, "Invalid signature")
}

#[tokio::test(start_paused = true)]
async fn stuck_unstuck_and_finished_are_told_once_each() {
    let up = Upstream::new();
    up.order("1", OrderState::PendingPay);
    up.script([Fault::Err(auth_error())]);
    let j = MemoryJournal::new();
    let seen = Arc::new(Seen::default());
    let e = observed(&j, &up, &seen);
    let id = e.start(SagaInput::cancel_unpaid(order("1"))).await.unwrap();
    assert!(matches!(e.wait(id).await.unwrap(), SagaExit::Stuck { .. }));
    assert_eq!(seen.take(), ["stuck:credentials:"]);
    // An operator resumes it in this process: unstuck, then finished.
    e.resume_by(id, "ops").await.unwrap();
    assert!(matches!(e.wait(id).await.unwrap(), SagaExit::Finished(_)));
    assert_eq!(seen.take(), ["unstuck", "finished:completed"]);
}

#[tokio::test(start_paused = true)]
async fn a_saga_left_stuck_by_another_process_is_told_unstuck_once() {
    let up = Upstream::new();
    up.order("1", OrderState::PendingPay);
    up.script([Fault::Err(auth_error())]);
    let j = MemoryJournal::new();
    let first = Arc::new(Seen::default());
    let e = observed(&j, &up, &first);
    let id = e.start(SagaInput::cancel_unpaid(order("1"))).await.unwrap();
    assert!(matches!(e.wait(id).await.unwrap(), SagaExit::Stuck { .. }));
    e.kill();
    // A second engine on the journal: an abort (which does not clear the
    // stuck mark in the journal) resumes it, told once at its launch.
    let seen = Arc::new(Seen::default());
    let e2 = observed(&j, &up, &seen);
    e2.abort_by(id, "customer changed mind", "ops")
        .await
        .unwrap();
    let exit = e2.wait(id).await.unwrap();
    assert!(matches!(exit, SagaExit::Finished(_)), "{exit:?}");
    let told = seen.take();
    assert_eq!(
        told.iter().filter(|w| *w == "unstuck").count(),
        1,
        "{told:?}"
    );
    assert!(told.last().unwrap().starts_with("finished:"), "{told:?}");
}
