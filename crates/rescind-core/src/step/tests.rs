//! Table tests of the step machine: every (phase, event) pair, no tokio.

use super::*;
use crate::channel::Conflict;
use crate::ids::RefundId;
use crate::runtime::SplitMix64;

fn limits() -> Limits {
    Limits {
        attempts_max: 3,
        backoff_initial_ms: 100,
        backoff_max_ms: 1_000,
        jitter_pct: 0,
        step_deadline_ms: 60_000,
        channel_wait_max_ms: 30_000,
        ..Limits::default()
    }
}

fn spec() -> StepSpec {
    StepSpec {
        label: "step 1 (release_stock)".into(),
        already_done: Some(StepOutcome::StockReleased { already: true }),
        owed: None,
        in_doubt: false,
        look_up: true,
        started_ms: 0,
        prior_rounds: 0,
    }
}

fn rng() -> SplitMix64 {
    SplitMix64::new(7)
}

fn cancelled() -> StepOutcome {
    StepOutcome::Cancelled { already: false }
}

fn maybe_applied() -> ChannelError {
    ChannelError::in_doubt("lost reply")
}

fn not_applied() -> ChannelError {
    ChannelError::not_applied("connection refused")
}

fn permanent(r: PermanentReason) -> ChannelError {
    ChannelError::permanent(r, "no")
}

/// Run `events` from a fresh machine; return every effect.
fn run(spec: StepSpec, events: Vec<(StepEvent, u64)>) -> (StepMachine, Vec<StepEffect>) {
    let mut m = StepMachine::new(spec, &limits());
    let r = rng();
    let effects = events
        .into_iter()
        .map(|(e, now)| m.step(e, now, &r).expect("expected event"))
        .collect();
    (m, effects)
}

fn done(outcome: StepOutcome, via: Via, attempts: u32) -> StepEffect {
    StepEffect::Done {
        outcome,
        via,
        attempts,
    }
}

fn stuck_reason(e: &StepEffect) -> &str {
    match e {
        StepEffect::Stuck { reason } => reason,
        other => panic!("expected Stuck, got {other:?}"),
    }
}

#[test]
fn a_fresh_step_calls_and_a_reply_is_its_outcome() {
    let (m, fx) = run(
        spec(),
        vec![
            (StepEvent::Begin, 0),
            (StepEvent::Called(Ok(cancelled())), 5),
        ],
    );
    assert_eq!(fx, vec![StepEffect::Call, done(cancelled(), Via::Reply, 1)]);
    assert_eq!(m.phase(), Phase::Over);
}

#[test]
fn an_in_doubt_step_looks_up_first() {
    let in_doubt = StepSpec {
        in_doubt: true,
        ..spec()
    };
    // Applied: the lookup's outcome, no call.
    let (_, fx) = run(
        in_doubt.clone(),
        vec![
            (StepEvent::Begin, 0),
            (StepEvent::LookedUp(Ok(Lookup::Applied(cancelled()))), 1),
        ],
    );
    assert_eq!(
        fx,
        vec![StepEffect::Lookup, done(cancelled(), Via::Lookup, 0)]
    );
    // Moved: the conflict, no call.
    let moved = StepOutcome::Conflict {
        conflict: Conflict::PaidMeanwhile,
        message: "paid".into(),
    };
    let (_, fx) = run(
        in_doubt.clone(),
        vec![
            (StepEvent::Begin, 0),
            (StepEvent::LookedUp(Ok(Lookup::Moved(moved.clone()))), 1),
        ],
    );
    assert_eq!(fx[1], done(moved, Via::Lookup, 0));
    // Not applied or unknown: re-issue in the same round.
    for answer in [Lookup::NotApplied, Lookup::Unknown] {
        let (_, fx) = run(
            in_doubt.clone(),
            vec![
                (StepEvent::Begin, 0),
                (StepEvent::LookedUp(Ok(answer)), 1),
                (StepEvent::Called(Ok(cancelled())), 2),
            ],
        );
        assert_eq!(
            fx,
            vec![
                StepEffect::Lookup,
                StepEffect::Call,
                done(cancelled(), Via::Reply, 1)
            ]
        );
    }
}

#[test]
fn the_lookup_can_be_switched_off_for_the_harness_self_test() {
    let s = StepSpec {
        in_doubt: true,
        look_up: false,
        ..spec()
    };
    let (_, fx) = run(s, vec![(StepEvent::Begin, 0)]);
    assert_eq!(fx, vec![StepEffect::Call]);
}

#[test]
fn a_failed_lookup_backs_off_and_looks_up_again() {
    let s = StepSpec {
        in_doubt: true,
        ..spec()
    };
    let (_, fx) = run(
        s,
        vec![
            (StepEvent::Begin, 0),
            (StepEvent::LookedUp(Err(not_applied())), 1),
            (StepEvent::Woke, 101),
        ],
    );
    assert_eq!(
        fx,
        vec![
            StepEffect::Lookup,
            StepEffect::Sleep { ms: 100 },
            StepEffect::Lookup
        ]
    );
}

#[test]
fn a_reply_that_may_have_been_applied_makes_the_next_round_look_up() {
    let (_, fx) = run(
        spec(),
        vec![
            (StepEvent::Begin, 0),
            (StepEvent::Called(Err(maybe_applied())), 1),
            (StepEvent::Woke, 101),
            (StepEvent::LookedUp(Ok(Lookup::NotApplied)), 102),
            (StepEvent::Called(Ok(cancelled())), 103),
        ],
    );
    assert_eq!(
        fx,
        vec![
            StepEffect::Call,
            StepEffect::Sleep { ms: 100 },
            StepEffect::Lookup,
            StepEffect::Call,
            done(cancelled(), Via::Reply, 2),
        ]
    );
}

#[test]
fn a_reply_certainly_not_applied_is_simply_re_sent_with_exponential_back_off() {
    let (_, fx) = run(
        spec(),
        vec![
            (StepEvent::Begin, 0),
            (StepEvent::Called(Err(not_applied())), 1),
            (StepEvent::Woke, 101),
            (StepEvent::Called(Err(not_applied())), 102),
        ],
    );
    assert_eq!(
        fx,
        vec![
            StepEffect::Call,
            StepEffect::Sleep { ms: 100 },
            StepEffect::Call,
            StepEffect::Sleep { ms: 200 },
        ]
    );
}

#[test]
fn a_channel_requested_wait_is_honoured_up_to_its_cap() {
    let ban = ChannelError::rate_limited(Some(std::time::Duration::from_secs(20)), "banned");
    let (_, fx) = run(
        spec(),
        vec![(StepEvent::Begin, 0), (StepEvent::Called(Err(ban)), 1)],
    );
    assert_eq!(fx[1], StepEffect::Sleep { ms: 20_000 });
    let long = ChannelError::rate_limited(Some(std::time::Duration::from_secs(3_600)), "banned");
    let (_, fx) = run(
        spec(),
        vec![(StepEvent::Begin, 0), (StepEvent::Called(Err(long)), 1)],
    );
    assert_eq!(fx[1], StepEffect::Sleep { ms: 30_000 });
}

#[test]
fn only_a_wait_the_channel_asked_for_after_a_refused_send_can_be_deferred() {
    let r = rng();
    // A ban: nothing was sent, the channel asked for the wait.
    let mut m = StepMachine::new(spec(), &limits());
    m.step(StepEvent::Begin, 0, &r).unwrap();
    assert!(!m.can_defer(), "not sleeping yet");
    let ban = ChannelError::rate_limited(Some(std::time::Duration::from_secs(20)), "banned");
    m.step(StepEvent::Called(Err(ban)), 1, &r).unwrap();
    assert!(m.can_defer());
    // A timeout may have been applied: its back-off is spent in the task.
    let mut m = StepMachine::new(spec(), &limits());
    m.step(StepEvent::Begin, 0, &r).unwrap();
    m.step(
        StepEvent::Called(Err(ChannelError::in_doubt("timeout"))),
        1,
        &r,
    )
    .unwrap();
    assert!(!m.can_defer());
    // Not applied but no wait asked for: an ordinary back-off.
    let mut m = StepMachine::new(spec(), &limits());
    m.step(StepEvent::Begin, 0, &r).unwrap();
    m.step(
        StepEvent::Called(Err(ChannelError::not_applied("503"))),
        1,
        &r,
    )
    .unwrap();
    assert!(!m.can_defer());
}

#[test]
fn deferred_tries_count_against_the_attempt_limit() {
    let r = rng();
    let ban = || ChannelError::rate_limited(Some(std::time::Duration::from_secs(1)), "banned");
    // attempts_max is 3: two tries were deferred already, so one more ban
    // ends the step.
    let mut m = StepMachine::new(
        StepSpec {
            prior_rounds: 2,
            ..spec()
        },
        &limits(),
    );
    assert_eq!(m.step(StepEvent::Begin, 0, &r).unwrap(), StepEffect::Call);
    match m.step(StepEvent::Called(Err(ban())), 1, &r).unwrap() {
        StepEffect::Stuck { reason } => assert!(reason.contains("3 tries"), "{reason}"),
        other => panic!("expected stuck, got {other:?}"),
    }
    // Its outcome counts the deferred tries among its attempts.
    let mut m = StepMachine::new(
        StepSpec {
            prior_rounds: 2,
            ..spec()
        },
        &limits(),
    );
    m.step(StepEvent::Begin, 0, &r).unwrap();
    match m
        .step(
            StepEvent::Called(Ok(StepOutcome::StockReleased { already: false })),
            1,
            &r,
        )
        .unwrap()
    {
        StepEffect::Done { attempts, .. } => assert_eq!(attempts, 3),
        other => panic!("expected done, got {other:?}"),
    }
}

#[test]
fn jitter_stays_within_its_percentage() {
    let l = Limits {
        jitter_pct: 20,
        ..limits()
    };
    for seed in 0..200 {
        let mut m = StepMachine::new(spec(), &l);
        let r = SplitMix64::new(seed);
        m.step(StepEvent::Begin, 0, &r).unwrap();
        match m
            .step(StepEvent::Called(Err(not_applied())), 1, &r)
            .unwrap()
        {
            StepEffect::Sleep { ms } => assert!((100..=120).contains(&ms), "{ms}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn giving_up_after_attempts_max_rounds_says_whether_still_in_doubt() {
    let (_, fx) = run(
        spec(),
        vec![
            (StepEvent::Begin, 0),
            (StepEvent::Called(Err(not_applied())), 1),
            (StepEvent::Woke, 2),
            (StepEvent::Called(Err(not_applied())), 3),
            (StepEvent::Woke, 4),
            (StepEvent::Called(Err(maybe_applied())), 5),
        ],
    );
    let reason = stuck_reason(&fx[5]);
    assert!(
        reason.starts_with(
            "step 1 (release_stock) is still in doubt (gave up after 3 tries over 5 ms; last error: retryable (may have been applied): lost reply)"
        ),
        "{reason}"
    );
    assert!(
        reason.contains("the channel may have applied it") && reason.contains("journal resolve"),
        "{reason}"
    );
}

/// An in-doubt step whose lookups keep failing with a permanent error gives
/// up *in doubt*: the reason leads with the doubt and what to do, and never
/// reads as the step's own permanent failure.
#[test]
fn a_step_still_in_doubt_after_its_retries_is_reported_in_doubt_not_permanent() {
    let s = StepSpec {
        in_doubt: true,
        ..spec()
    };
    let refused = || permanent(PermanentReason::NotFound);
    let (_, fx) = run(
        s,
        vec![
            (StepEvent::Begin, 0),
            (StepEvent::LookedUp(Err(refused())), 1),
            (StepEvent::Woke, 2),
            (StepEvent::LookedUp(Err(refused())), 3),
            (StepEvent::Woke, 4),
            (StepEvent::LookedUp(Err(refused())), 5),
        ],
    );
    assert_eq!(fx[0], StepEffect::Lookup);
    let reason = stuck_reason(&fx[5]);
    assert!(
        reason.starts_with("step 1 (release_stock) is still in doubt (gave up after 3 tries"),
        "{reason}"
    );
    assert!(
        reason.contains("the channel may have applied it; verify it upstream"),
        "{reason}"
    );
    assert!(!reason.starts_with("permanent"), "{reason}");

    // The same lookup failure while work is owed: stuck at once, in doubt,
    // not "failed after an irreversible step".
    let owing = StepSpec {
        in_doubt: true,
        owed: Some("release stock lock damai:L1".into()),
        ..spec()
    };
    let (_, fx) = run(
        owing,
        vec![
            (StepEvent::Begin, 0),
            (StepEvent::LookedUp(Err(refused())), 1),
        ],
    );
    let reason = stuck_reason(&fx[1]);
    assert!(
        reason.starts_with(
            "step 1 (release_stock) is still in doubt (its lookup failed: permanent (NotFound)"
        ),
        "{reason}"
    );
    assert!(reason.contains("release stock lock damai:L1"), "{reason}");
    assert!(
        !reason.contains("failed after an irreversible step"),
        "{reason}"
    );

    // Not in doubt: a step that gave up on plain retryable errors says only that.
    let (_, fx) = run(
        spec(),
        vec![
            (StepEvent::Begin, 0),
            (StepEvent::Called(Err(not_applied())), 1),
            (StepEvent::Woke, 2),
            (StepEvent::Called(Err(not_applied())), 3),
            (StepEvent::Woke, 4),
            (StepEvent::Called(Err(not_applied())), 5),
        ],
    );
    let reason = stuck_reason(&fx[5]);
    assert!(
        reason.starts_with("step 1 (release_stock) gave up after 3 tries over 5 ms: retryable"),
        "{reason}"
    );
    assert!(!reason.contains("in doubt"), "{reason}");
}

#[test]
fn giving_up_at_the_step_deadline() {
    let (_, fx) = run(
        spec(),
        vec![
            (StepEvent::Begin, 0),
            (StepEvent::Called(Err(not_applied())), 60_000),
        ],
    );
    let reason = stuck_reason(&fx[1]);
    assert!(
        reason.contains("gave up after 1 tries over 60000 ms"),
        "{reason}"
    );
    assert!(!reason.contains("in doubt"), "{reason}");
}

#[test]
fn already_done_is_the_actions_success_or_leaves_the_step_in_doubt() {
    let already = ChannelError::new(ErrorClass::AlreadyDone, "already released");
    let (_, fx) = run(
        spec(),
        vec![
            (StepEvent::Begin, 0),
            (StepEvent::Called(Err(already.clone())), 1),
        ],
    );
    assert_eq!(
        fx[1],
        done(StepOutcome::StockReleased { already: true }, Via::Reply, 1)
    );
    // A paid cancel's "already cancelled" must find its refund by lookup.
    let paid = StepSpec {
        already_done: None,
        ..spec()
    };
    let opened = StepOutcome::RefundOpened {
        refund_id: RefundId::from("R1"),
    };
    let (_, fx) = run(
        paid,
        vec![
            (StepEvent::Begin, 0),
            (StepEvent::Called(Err(already)), 1),
            (StepEvent::Woke, 101),
            (
                StepEvent::LookedUp(Ok(Lookup::Applied(opened.clone()))),
                102,
            ),
        ],
    );
    assert_eq!(
        fx,
        vec![
            StepEffect::Call,
            StepEffect::Sleep { ms: 100 },
            StepEffect::Lookup,
            done(opened, Via::Lookup, 1)
        ]
    );
}

#[test]
fn a_conflict_is_journaled_unless_it_is_unplannable_while_work_is_owed() {
    let paid = ChannelError::conflict(Conflict::PaidMeanwhile, "paid");
    let shipped = ChannelError::conflict(Conflict::AlreadyShipped, "shipped");
    let owing = StepSpec {
        owed: Some("release stock lock damai:L1".into()),
        ..spec()
    };
    for (s, e, stuck) in [
        (spec(), paid.clone(), false),
        (spec(), shipped.clone(), false),
        (owing.clone(), paid, false),
        (owing, shipped, true),
    ] {
        let (_, fx) = run(
            s,
            vec![
                (StepEvent::Begin, 0),
                (StepEvent::Called(Err(e.clone())), 1),
            ],
        );
        match (&fx[1], stuck) {
            (StepEffect::Stuck { reason }, true) => {
                assert!(reason.contains("work still owed"), "{reason}")
            }
            (StepEffect::Done { outcome, .. }, false) => {
                assert!(
                    matches!(outcome, StepOutcome::Conflict { .. }),
                    "{outcome:?}"
                )
            }
            (other, _) => panic!("{e}: {other:?}"),
        }
    }
}

#[test]
fn a_permanent_error_fails_the_step_only_when_nothing_is_owed() {
    let e = permanent(PermanentReason::InvalidRequest);
    let (_, fx) = run(
        spec(),
        vec![
            (StepEvent::Begin, 0),
            (StepEvent::Called(Err(e.clone())), 1),
        ],
    );
    assert_eq!(
        fx[1],
        done(StepOutcome::Failed { error: e.clone() }, Via::Reply, 1)
    );
    let owing = StepSpec {
        owed: Some("release stock lock damai:L1".into()),
        ..spec()
    };
    let (_, fx) = run(
        owing,
        vec![(StepEvent::Begin, 0), (StepEvent::Called(Err(e)), 1)],
    );
    let reason = stuck_reason(&fx[1]);
    assert!(
        reason.starts_with("step 1 (release_stock) failed after an irreversible step, with work still owed (release stock lock damai:L1)"),
        "{reason}"
    );
}

#[test]
fn credentials_and_clock_failures_make_the_saga_stuck_on_any_step() {
    for (r, prefix) in [
        (PermanentReason::Auth, "credentials: the call of step 1"),
        (
            PermanentReason::InvalidSession,
            "credentials: the call of step 1",
        ),
        (PermanentReason::ClockSkew, "clock: the call of step 1"),
    ] {
        let (_, fx) = run(
            spec(),
            vec![
                (StepEvent::Begin, 0),
                (StepEvent::Called(Err(permanent(r))), 1),
            ],
        );
        assert!(stuck_reason(&fx[1]).starts_with(prefix), "{:?}", fx[1]);
    }
    // A lookup refused for credentials: stuck too, nothing re-sent.
    let s = StepSpec {
        in_doubt: true,
        ..spec()
    };
    let (_, fx) = run(
        s,
        vec![
            (StepEvent::Begin, 0),
            (
                StepEvent::LookedUp(Err(permanent(PermanentReason::Auth))),
                1,
            ),
        ],
    );
    let reason = stuck_reason(&fx[1]);
    assert!(
        reason.starts_with("credentials: the lookup of step 1"),
        "{reason}"
    );
    assert!(reason.contains("still in doubt"), "{reason}");
}

/// A machine driven into `phase`.
fn machine_in(phase: Phase) -> StepMachine {
    let r = rng();
    let in_doubt = phase == Phase::LookingUp;
    let mut m = StepMachine::new(StepSpec { in_doubt, ..spec() }, &limits());
    if phase == Phase::Idle {
        return m;
    }
    m.step(StepEvent::Begin, 0, &r).unwrap();
    match phase {
        Phase::Sleeping => {
            m.step(StepEvent::Called(Err(not_applied())), 1, &r)
                .unwrap();
        }
        Phase::Over => {
            m.step(StepEvent::Called(Ok(cancelled())), 1, &r).unwrap();
        }
        _ => {}
    }
    assert_eq!(m.phase(), phase);
    m
}

#[test]
fn every_phase_event_pair_is_either_a_transition_or_a_typed_error() {
    let phases = [
        Phase::Idle,
        Phase::Calling,
        Phase::LookingUp,
        Phase::Sleeping,
        Phase::Over,
    ];
    let events = || {
        vec![
            StepEvent::Begin,
            StepEvent::Called(Ok(cancelled())),
            StepEvent::LookedUp(Ok(Lookup::NotApplied)),
            StepEvent::Woke,
        ]
    };
    let valid = |p: Phase, e: &StepEvent| {
        matches!(
            (p, e),
            (Phase::Idle, StepEvent::Begin)
                | (Phase::Calling, StepEvent::Called(_))
                | (Phase::LookingUp, StepEvent::LookedUp(_))
                | (Phase::Sleeping, StepEvent::Woke)
        )
    };
    let mut transitions = 0;
    for p in phases {
        for e in events() {
            let mut m = machine_in(p);
            let name = e.name();
            let ok = valid(p, &e);
            match m.step(e, 10, &rng()) {
                Ok(_) => {
                    assert!(ok, "{p:?} × {name} should be refused");
                    transitions += 1;
                }
                Err(err) => {
                    assert!(!ok, "{p:?} × {name} should be accepted: {err}");
                    assert_eq!(
                        err,
                        UnexpectedEvent {
                            phase: p,
                            event: name
                        }
                    );
                    assert_eq!(m.phase(), p, "a refused event changes nothing");
                }
            }
        }
    }
    assert_eq!(transitions, 4);
}
