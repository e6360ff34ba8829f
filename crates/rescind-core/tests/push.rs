//! Refund waits on a channel with a push source (TOP's TMC, say): while the
//! source is live a waiting saga polls only every `refund_poll_with_push_ms`;
//! when it stops being live (told so, or its heartbeat lapsed) polling
//! resumes on the back-off schedule, parked sagas included. A table of
//! scripts on virtual time, each checked by the upstream's poll counter.

mod common;

use common::*;
use rescind_core::*;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
enum Push {
    /// `set_push_live(true)`.
    Live,
    /// `set_push_live(false)`.
    Dead,
    /// `push_heartbeat(valid_for)`.
    Beat(u64),
}

/// A script step: at `t_ms` after the saga started (before it waits if 0).
struct Case {
    name: &'static str,
    with_push_ms: u64,
    script: &'static [(u64, Push)],
    /// (at ms, polls at least, polls at most).
    checks: &'static [(u64, u32, u32)],
}

// fast_limits: first poll after 1 s, doubling to at most 10 s.
const CASES: &[Case] = &[
    Case {
        name: "no push source: back-off polling",
        with_push_ms: 300_000,
        script: &[],
        // Polls at 1, 3, 7, 15, 25, 35, ... s.
        checks: &[(8_000, 3, 3), (60_000, 8, 8)],
    },
    Case {
        name: "live before the wait: no poll for the push interval",
        with_push_ms: 300_000,
        script: &[(0, Push::Live)],
        checks: &[(60_000, 0, 0), (299_000, 0, 0)],
    },
    Case {
        name: "live: the fallback poll keeps the push interval (no doubling)",
        with_push_ms: 20_000,
        script: &[(0, Push::Live)],
        checks: &[(65_000, 3, 3)],
    },
    Case {
        name: "told dead: polling resumes at once (parked saga re-timed)",
        with_push_ms: 300_000,
        script: &[(0, Push::Live), (30_000, Push::Dead)],
        checks: &[(29_000, 0, 0), (31_500, 1, 1), (60_000, 4, 5)],
    },
    Case {
        name: "heartbeat not renewed: lapses by itself",
        with_push_ms: 300_000,
        script: &[(0, Push::Beat(20_000))],
        checks: &[(19_000, 0, 0), (21_500, 1, 1)],
    },
    Case {
        name: "heartbeat renewed: stays live",
        with_push_ms: 300_000,
        script: &[
            (0, Push::Beat(20_000)),
            (15_000, Push::Beat(20_000)),
            (30_000, Push::Beat(20_000)),
            (45_000, Push::Beat(20_000)),
        ],
        checks: &[(60_000, 0, 0), (67_000, 1, 1)],
    },
];

fn polls(up: &Upstream) -> u32 {
    up.book
        .lock()
        .unwrap()
        .polls
        .get("R1")
        .copied()
        .unwrap_or(0)
}

fn apply(e: &Engine, p: Push) {
    let ch = ChannelName::from("tbc");
    match p {
        Push::Live => e.set_push_live(&ch, true),
        Push::Dead => e.set_push_live(&ch, false),
        Push::Beat(ms) => e.push_heartbeat(&ch, Duration::from_millis(ms)),
    }
}

#[tokio::test(start_paused = true)]
async fn push_liveness_table() {
    for case in CASES {
        let up = Upstream::new();
        up.order("O1", OrderState::Paid);
        up.book.lock().unwrap().refunds_never_complete = true;
        let j = MemoryJournal::new();
        let e = Engine::builder(Arc::new(j.clone()))
            .channels(up.channels("tbc"))
            .clock(Arc::new(TokioClock::with_base(1_700_000_000_000)))
            .limits(Limits {
                refund_poll_with_push_ms: case.with_push_ms,
                ..fast_limits()
            })
            .build();
        // Every event, in time order: script steps and checks.
        let mut script = case.script.iter().peekable();
        while let Some((_, p)) = script.next_if(|(t, _)| *t == 0) {
            apply(&e, *p);
        }
        let id = e.start(SagaInput::cancel_paid(order("O1"))).await.unwrap();
        let t0 = tokio::time::Instant::now();
        for (at, min, max) in case.checks {
            while let Some((t, p)) = script.next_if(|(t, _)| t <= at) {
                tokio::time::sleep_until(t0 + Duration::from_millis(*t)).await;
                apply(&e, *p);
            }
            tokio::time::sleep_until(t0 + Duration::from_millis(*at)).await;
            let n = polls(&up);
            assert!(
                (*min..=*max).contains(&n),
                "{}: {n} polls at {at} ms, expected {min}..={max}",
                case.name
            );
        }
        assert!(e.is_running(id), "{}: the saga still waits", case.name);
        e.shutdown(Duration::from_secs(1)).await;
    }
}

/// Pushed news on a live channel: the saga finishes with the one lookup that
/// confirms the news, and never polls.
#[tokio::test(start_paused = true)]
async fn pushed_news_finishes_the_wait_without_polls() {
    let up = Upstream::new();
    up.order("O1", OrderState::Paid);
    up.book.lock().unwrap().refunds_never_complete = true;
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 7);
    e.set_push_live(&ChannelName::from("tbc"), true);
    assert!(e.is_push_live(&ChannelName::from("tbc")));
    assert!(!e.is_push_live(&ChannelName::from("other")));
    let id = e.start(SagaInput::cancel_paid(order("O1"))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(polls(&up), 0);
    assert_eq!(e.stats().parked, 1, "waiting on the push interval: parked");
    up.book.lock().unwrap().refunds_never_complete = false;
    let done = Observation::Refund {
        order: order("O1"),
        refund_id: RefundId("R1".into()),
        status: RefundStatus {
            state: RefundState::Completed,
            upstream: "SUCCESS".into(),
        },
    };
    assert_eq!(e.deliver(done.clone()), 1);
    let exit = e.wait(id).await.unwrap();
    assert!(
        matches!(exit, SagaExit::Finished(SagaOutcome::Completed { .. })),
        "{exit:?}"
    );
    assert_eq!(polls(&up), 1, "only the confirming lookup");
    assert_eq!(
        e.deliver(done),
        0,
        "a duplicate after the end reaches no one"
    );
}
