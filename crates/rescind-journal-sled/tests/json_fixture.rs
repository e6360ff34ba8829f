//! A journal written before the binary record encoding existed — every
//! record JSON, record format 1 (`tests/fixtures/json-v1`, made by
//! `examples/write_fixture_journal.rs` at commit d54f3ea) — opens under the
//! current code, recovers and finishes its unfinished sagas against an
//! in-process test channel, and ends as a mixed journal (old JSON records,
//! new binary ones) that reads back exactly, floats included.

use async_trait::async_trait;
use rescind_core::{
    Action, CancelOrder, CancelOutcome, CancelRequest, ChannelError, Channels, Decision, Engine,
    Journal, Limits, OrderLookup, OrderRef, OrderState, OrderStatus, Record, RefundId,
    RefundOpened, RefundState, RefundStatus, SagaDefinition, SagaExit, SagaId, SagaKind,
    SagaOutcome, SagaSet, SagaState, StepExecutor, StepOutcome,
};
use rescind_journal_sled::{keys, SledConfig, SledJournal};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/json-v1");

/// The fixture's sagas (ids 1–4, see the generator).
const UNPAID_IN_DOUBT: u128 = 1;
const PAID_WAITING: u128 = 2;
const CUSTOM_IN_DOUBT: u128 = 3;
const FINISHED: u128 = 4;

fn copy_fixture(to: &Path) {
    for name in ["conf", "db"] {
        std::fs::copy(Path::new(FIXTURE).join(name), to.join(name))
            .unwrap_or_else(|e| panic!("copy {name}: {e}"));
    }
}

/// The first byte of every record value of `saga`, read with sled directly.
fn first_bytes(dir: &Path, saga: SagaId) -> Vec<u8> {
    let db = sled::open(dir).expect("sled open");
    let tree = db.open_tree(keys::TREE).expect("tree");
    let out = tree
        .scan_prefix(keys::record_prefix(saga))
        .map(|kv| kv.expect("scan").1.first().copied().expect("empty value"))
        .collect();
    drop(tree);
    drop(db);
    out
}

/// The fixture channel: order 1001 unpaid, 1002 refunding with R1002 about
/// to complete.
#[derive(Default)]
struct FixtureChannel {
    calls: Mutex<Vec<String>>,
}

fn permanent(what: &str) -> ChannelError {
    ChannelError::permanent(rescind_core::PermanentReason::NotFound, what.to_string())
}

#[async_trait]
impl CancelOrder for FixtureChannel {
    async fn cancel_unpaid(&self, req: &CancelRequest) -> Result<CancelOutcome, ChannelError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("cancel_unpaid:{}", req.order.order_id));
        Ok(CancelOutcome { already: false })
    }
    async fn cancel_paid(&self, req: &CancelRequest) -> Result<RefundOpened, ChannelError> {
        Err(permanent(&format!(
            "no paid cancel expected for {}",
            req.order
        )))
    }
}

#[async_trait]
impl OrderLookup for FixtureChannel {
    async fn order_status(
        &self,
        order: &OrderRef,
        _account: Option<&rescind_core::AccountId>,
    ) -> Result<OrderStatus, ChannelError> {
        match order.order_id.as_str() {
            "1001" => Ok(OrderStatus {
                state: OrderState::PendingPay,
                upstream: "WAIT_BUYER_PAY".into(),
            }),
            other => Err(permanent(&format!("order {other}"))),
        }
    }
    async fn refund_status(
        &self,
        _order: &OrderRef,
        refund_id: &RefundId,
        _account: Option<&rescind_core::AccountId>,
    ) -> Result<RefundStatus, ChannelError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("refund_status:{refund_id}"));
        Ok(RefundStatus {
            state: RefundState::Completed,
            upstream: "SUCCESS".into(),
        })
    }
}

/// The fixture's custom saga: two `fixture_step` steps, then finish.
struct TwoSteps;

impl SagaDefinition for TwoSteps {
    fn kind(&self) -> SagaKind {
        SagaKind("fixture_two_steps".into())
    }
    fn decide(&self, s: &SagaState) -> Decision {
        let done = s.steps.iter().filter(|st| st.outcome.is_some()).count();
        if done < 2 {
            Decision::Act(Action::custom(
                "fixture_step",
                json!({"n": done, "x": 1e-24}),
            ))
        } else {
            Decision::Finish(SagaOutcome::Completed {
                order: s.order.clone(),
                note: None,
            })
        }
    }
}

#[derive(Default)]
struct Step {
    payloads: Mutex<Vec<Value>>,
}

#[async_trait]
impl StepExecutor for Step {
    async fn execute(&self, payload: &Value) -> Result<Value, ChannelError> {
        self.payloads.lock().unwrap().push(payload.clone());
        Ok(json!({"echo": payload["x"].clone()}))
    }
}

fn bits(v: &Value) -> Option<u64> {
    v.as_f64().map(f64::to_bits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_journal_recovers_and_finishes_under_the_binary_encoding() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    let id = SagaId::from_u128;

    // The fixture really is the old format: every record is JSON.
    for saga in [UNPAID_IN_DOUBT, PAID_WAITING, CUSTOM_IN_DOUBT, FINISHED] {
        let firsts = first_bytes(dir.path(), id(saga));
        assert!(!firsts.is_empty(), "saga {saga} has records");
        assert!(firsts.iter().all(|b| *b == b'{'), "saga {saga}: {firsts:?}");
    }

    let journal = Arc::new(
        SledJournal::open(dir.path(), SledConfig::default())
            .await
            .expect("the old journal opens"),
    );
    assert_eq!(
        journal.list(SagaSet::Unfinished).await.unwrap(),
        vec![id(UNPAID_IN_DOUBT), id(PAID_WAITING), id(CUSTOM_IN_DOUBT)]
    );
    assert_eq!(
        journal.list(SagaSet::Finished).await.unwrap(),
        vec![id(FINISHED)]
    );
    // The custom saga's params were journaled as JSON with 1e-24 in them;
    // they read back bit for bit.
    let custom = journal.read(id(CUSTOM_IN_DOUBT)).await.unwrap();
    match &custom[0].record {
        Record::Started { input, .. } => {
            assert_eq!(bits(&input.params["tiny"]), Some(1e-24_f64.to_bits()));
            assert_eq!(bits(&input.params["price"]), Some(0.1_f64.to_bits()));
            assert_eq!(input.params["big"].as_u64(), Some(u64::MAX));
        }
        other => panic!("expected started, got {other:?}"),
    }

    let channel = Arc::new(FixtureChannel::default());
    let step = Arc::new(Step::default());
    let limits = Limits {
        refund_poll_initial_ms: 10,
        ..Limits::default()
    };
    let engine = Engine::builder(journal.clone())
        .channels(
            Channels::new()
                .with_cancel("fixture", channel.clone())
                .with_lookup("fixture", channel.clone()),
        )
        .saga(TwoSteps)
        .executor("fixture_step", step.clone())
        .limits(limits)
        .build();
    engine.recover().await.expect("recover the old journal");
    for saga in [UNPAID_IN_DOUBT, PAID_WAITING, CUSTOM_IN_DOUBT] {
        let exit = tokio::time::timeout(Duration::from_secs(30), engine.wait(id(saga)))
            .await
            .unwrap_or_else(|_| panic!("saga {saga} did not finish"))
            .expect("wait");
        assert!(
            matches!(exit, SagaExit::Finished(SagaOutcome::Completed { .. })),
            "saga {saga}: {exit:?}"
        );
    }
    assert!(journal.list(SagaSet::Unfinished).await.unwrap().is_empty());

    // What upstream saw: the in-doubt unpaid cancel re-issued once after its
    // lookup, the refund polled, the in-doubt custom step re-run with its
    // journaled payload, floats intact.
    let calls = channel.calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().filter(|c| *c == "cancel_unpaid:1001").count(),
        1,
        "{calls:?}"
    );
    assert!(
        calls.iter().any(|c| c == "refund_status:R1002"),
        "{calls:?}"
    );
    let payloads = step.payloads.lock().unwrap().clone();
    assert_eq!(payloads.len(), 1, "{payloads:?}");
    assert_eq!(payloads[0]["n"], json!(1));
    assert_eq!(bits(&payloads[0]["x"]), Some(1e-24_f64.to_bits()));

    // Every saga reads back whole: old JSON records and new binary ones.
    let mut reread = Vec::new();
    for saga in [UNPAID_IN_DOUBT, PAID_WAITING, CUSTOM_IN_DOUBT, FINISHED] {
        let entries = journal.read(id(saga)).await.unwrap();
        assert!(
            matches!(
                entries.last().map(|e| &e.record),
                Some(Record::Finished { .. })
            ),
            "saga {saga}: {entries:?}"
        );
        reread.push(entries);
    }
    match &reread[2][2].record {
        Record::Outcome {
            outcome: StepOutcome::Custom { value },
            ..
        } => assert_eq!(bits(&value["echo"]), Some(1e-24_f64.to_bits())),
        other => panic!("expected the old custom outcome, got {other:?}"),
    }
    engine.shutdown(Duration::from_secs(5)).await;
    drop(engine);
    Arc::try_unwrap(journal)
        .unwrap_or_else(|_| panic!("journal still shared"))
        .close()
        .await
        .unwrap();

    // On disk: the old records are still JSON, the new ones binary (a mixed
    // journal), and it reopens and reads the same.
    for (saga, old) in [
        (UNPAID_IN_DOUBT, 2),
        (PAID_WAITING, 3),
        (CUSTOM_IN_DOUBT, 4),
    ] {
        let firsts = first_bytes(dir.path(), id(saga));
        assert!(firsts.len() > old, "saga {saga}: {firsts:?}");
        assert!(
            firsts[..old].iter().all(|b| *b == b'{'),
            "saga {saga}: {firsts:?}"
        );
        assert!(
            firsts[old..].iter().all(|b| *b == 2),
            "saga {saga}: {firsts:?}"
        );
    }
    let journal = SledJournal::open(dir.path(), SledConfig::default())
        .await
        .unwrap();
    for (i, saga) in [UNPAID_IN_DOUBT, PAID_WAITING, CUSTOM_IN_DOUBT, FINISHED]
        .into_iter()
        .enumerate()
    {
        assert_eq!(journal.read(id(saga)).await.unwrap(), reread[i]);
    }
}
