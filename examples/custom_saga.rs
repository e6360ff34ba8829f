//! A user-defined saga, `cancel_then_notify`: cancel an unpaid Tmall TBC order,
//! then POST a notification to the backend's own webhook. It runs on the same
//! engine as the built-in sagas, and its custom steps get the same treatment:
//! each is journaled (intent before, outcome after), retried, and when its
//! result is unknown (here: the webhook answers too slowly the first time) the
//! executor's `resolve` is asked whether it took effect before anything is
//! sent again.
//!
//! ```sh
//! cargo run --example custom_saga
//! cargo run --example custom_saga -- --sim-url http://127.0.0.1:8666
//! ```

mod support;

use anyhow::{Context, Result};
use axum::{extract::Path, extract::State, http::StatusCode, Json};
use clap::Parser;
use rescind::core::async_trait;
use rescind::core::{Action, Record, Via};
use rescind::core::{
    CancelRequest, Decision, PermanentReason, Resolved, SagaDefinition, SagaState, StepOutcome,
};
use rescind::inspect;
use rescind::prelude::*;
use rescind::sim::defaults;
use rescind::top::{GatewayConfig, TbcChannel, TopConfig};
use rescind::wire::sign::Secret;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "A user-defined saga on the rescind engine")]
pub struct Args {
    /// The simulator to talk to (default: start one in this process).
    #[arg(long)]
    pub sim_url: Option<String>,
    /// Give up waiting for a saga after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
}

#[derive(Debug)]
pub struct Report {
    pub outcome: SagaExit,
    /// The custom saga's records, by type (`started`, `intent`, ...).
    pub records: Vec<String>,
    /// How the notify step's outcome became known.
    pub notify_via: Option<Via>,
    /// Notifications the webhook received.
    pub notifications: usize,
    /// A built-in saga on the same engine.
    pub builtin_outcome: SagaExit,
    pub effects: BTreeMap<(String, String), u64>,
}

/// The saga: a pure decision from the folded journal to the next step.
struct CancelThenNotify;

impl SagaDefinition for CancelThenNotify {
    fn kind(&self) -> SagaKind {
        SagaKind("cancel_then_notify".into())
    }
    fn validate(&self, input: &SagaInput) -> Result<(), String> {
        match input.params["webhook"].as_str() {
            Some(_) => Ok(()),
            None => Err("params.webhook (a URL) is required".into()),
        }
    }
    fn decide(&self, s: &SagaState) -> Decision {
        let order_id = s.input.order.order_id.as_str();
        match (s.steps.len(), s.last_outcome()) {
            (0, _) => Decision::Act(Action::Custom(rescind::core::action::Custom {
                name: "tbc_cancel".into(),
                payload: json!({ "order_id": order_id }),
            })),
            (_, Some(StepOutcome::Failed { error })) => Decision::Finish(SagaOutcome::Failed {
                reason: error.to_string(),
            }),
            (_, Some(StepOutcome::Conflict { message, .. })) => {
                Decision::Finish(SagaOutcome::Failed {
                    reason: message.clone(),
                })
            }
            (1, _) => Decision::Act(Action::Custom(rescind::core::action::Custom {
                name: "notify".into(),
                // The payload is journaled with the intent: `resolve` sees the same key.
                payload: json!({
                    "url": s.input.params["webhook"],
                    "key": s.id.to_string(),
                    "order_id": order_id,
                    "event": "cancelled",
                }),
            })),
            _ => Decision::Finish(SagaOutcome::Completed {
                order: OrderState::Cancelled,
                note: Some("cancelled; backend notified".into()),
            }),
        }
    }
}

/// Step `tbc_cancel`: cancel through the Tmall TBC channel; resolve by looking the order up.
struct TbcCancel(Arc<TbcChannel>);

#[async_trait]
impl StepExecutor for TbcCancel {
    async fn execute(&self, p: &Value) -> Result<Value, ChannelError> {
        let order = OrderRef::new("tmall-tbc", p["order_id"].as_str().unwrap_or_default());
        let req = CancelRequest {
            account: None,
            order,
            reason: Some("cancel_then_notify".into()),
            remark: None,
        };
        let out = self.0.cancel_unpaid(&req).await?;
        Ok(json!({ "already": out.already }))
    }
    async fn resolve(&self, p: &Value) -> Result<Resolved, ChannelError> {
        let order = OrderRef::new("tmall-tbc", p["order_id"].as_str().unwrap_or_default());
        Ok(match self.0.order_status(&order, None).await?.state {
            OrderState::Cancelled => Resolved::Applied(json!({ "already": false })),
            OrderState::PendingPay => Resolved::NotApplied,
            _ => Resolved::Unknown, // re-issue: the channel answers with the conflict
        })
    }
}

/// Step `notify`: POST to the webhook; resolve by asking it whether the key arrived.
struct Notify(reqwest::Client);

#[async_trait]
impl StepExecutor for Notify {
    async fn execute(&self, p: &Value) -> Result<Value, ChannelError> {
        let url = p["url"].as_str().unwrap_or_default();
        let resp = self
            .0
            .post(url)
            .json(p)
            .send()
            .await
            .map_err(|e| match e.is_connect() {
                true => ChannelError::not_applied(e.to_string()), // never reached the webhook
                false => ChannelError::in_doubt(e.to_string()),   // may have arrived
            })?;
        match resp.status() {
            s if s.is_success() => Ok(json!({ "status": s.as_u16() })),
            s if s.is_server_error() => {
                Err(ChannelError::in_doubt(format!("webhook answered {s}")))
            }
            s => Err(ChannelError::permanent(
                PermanentReason::InvalidRequest,
                format!("webhook answered {s}"),
            )),
        }
    }
    async fn resolve(&self, p: &Value) -> Result<Resolved, ChannelError> {
        let url = format!(
            "{}/{}",
            p["url"].as_str().unwrap_or_default(),
            p["key"].as_str().unwrap_or_default()
        );
        let resp = self
            .0
            .get(url)
            .send()
            .await
            .map_err(|e| ChannelError::in_doubt(e.to_string()))?;
        Ok(match resp.status() {
            StatusCode::OK => Resolved::Applied(json!({ "status": 200, "confirmed": "by lookup" })),
            StatusCode::NOT_FOUND => Resolved::NotApplied,
            s => {
                return Err(ChannelError::in_doubt(format!(
                    "webhook lookup answered {s}"
                )))
            }
        })
    }
}

/// The backend's webhook: records notifications; its first answer is slow.
async fn serve_webhook() -> Result<(String, Arc<Mutex<Vec<Value>>>)> {
    type Got = Arc<Mutex<Vec<Value>>>;
    async fn post(State(got): State<Got>, Json(body): Json<Value>) -> StatusCode {
        let first = {
            let mut g = got.lock().unwrap();
            g.push(body);
            g.len() == 1
        };
        if first {
            tokio::time::sleep(Duration::from_millis(2_500)).await; // past the engine's attempt timeout
        }
        StatusCode::OK
    }
    async fn get(State(got): State<Got>, Path(key): Path<String>) -> StatusCode {
        match got.lock().unwrap().iter().any(|n| n["key"] == key.as_str()) {
            true => StatusCode::OK,
            false => StatusCode::NOT_FOUND,
        }
    }
    let got: Got = Arc::default();
    let app = axum::Router::new()
        .route("/notifications", axum::routing::post(post))
        .route("/notifications/{key}", axum::routing::get(get))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/notifications", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, got))
}

pub async fn run(args: Args) -> Result<Report> {
    let sim = support::SimHandle::connect_or_start(args.sim_url).await?;
    sim.add_orders(&[
        support::seed("tmall-tbc", "TBC-7001", "WAIT_BUYER_PAY"),
        support::seed("tmall-tbc", "TBC-7002", "WAIT_BUYER_PAY"),
    ])
    .await?;
    let (webhook, notifications) = serve_webhook().await?;

    let gateway = GatewayConfig::new(
        format!("{}/router/rest", sim.url),
        defaults::APP_KEY,
        Secret::new(defaults::APP_SECRET),
    );
    let tbc = Arc::new(TbcChannel::connect(TopConfig::new(gateway))?);
    let dir = tempfile::tempdir()?;
    let journal = Arc::new(SledJournal::open(dir.path(), SledConfig::default()).await?);
    let engine = Engine::builder(journal)
        .channels(
            Channels::new()
                .with_cancel("tmall-tbc", tbc.clone())
                .with_lookup("tmall-tbc", tbc.clone()),
        )
        .saga(CancelThenNotify) // next to the built-in sagas
        .executor("tbc_cancel", Arc::new(TbcCancel(tbc)))
        .executor("notify", Arc::new(Notify(reqwest::Client::new())))
        .limits(Limits {
            attempt_timeout_ms: 1_000,
            ..Limits::default()
        })
        .build();
    engine.recover().await?;

    let wait = Duration::from_secs(args.wait_secs);
    let input = SagaInput::custom(
        "cancel_then_notify",
        OrderRef::new("tmall-tbc", "TBC-7001"),
        json!({ "webhook": webhook }),
    );
    let id = engine.start(input).await?;
    let builtin = engine
        .start(SagaInput::cancel_unpaid(OrderRef::new(
            "tmall-tbc",
            "TBC-7002",
        )))
        .await?;
    let outcome = tokio::time::timeout(wait, engine.wait(id))
        .await
        .context("custom saga timed out")??;
    let builtin_outcome = tokio::time::timeout(wait, engine.wait(builtin))
        .await
        .context("built-in saga timed out")??;

    let (state, entries) = inspect::load(engine.journal().as_ref(), id)
        .await
        .map_err(anyhow::Error::msg)?;
    println!(
        "saga {id} ({}): {}\n",
        state.input.kind,
        outcome_text(&outcome)
    );
    for (line, e) in inspect::timeline(&entries).iter().zip(&entries) {
        println!(
            "  {:>2}  {:<9} {}",
            line.seq,
            line.record,
            inspect::describe(&e.record)
        );
    }
    let notify_via = entries.iter().find_map(|e| match &e.record {
        Record::Outcome { step: 1, via, .. } => Some(*via),
        _ => None,
    });
    println!(
        "\nbuilt-in cancel_unpaid {builtin} on the same engine: {}",
        outcome_text(&builtin_outcome)
    );
    let notifications = notifications.lock().unwrap().len();
    println!("webhook received {notifications} notification(s)");
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(Report {
        outcome,
        records: inspect::timeline(&entries)
            .into_iter()
            .map(|l| l.record)
            .collect(),
        notify_via,
        notifications,
        builtin_outcome,
        effects: sim.effect_counts().await?,
    })
}

fn outcome_text(exit: &SagaExit) -> String {
    match exit {
        SagaExit::Finished(o) => serde_json::to_string(o).unwrap_or_default(),
        other => format!("{other:?}"),
    }
}

#[allow(dead_code)] // the test includes this file as a module and calls `run`
#[tokio::main]
async fn main() -> Result<()> {
    let report = run(Args::parse()).await?;
    anyhow::ensure!(
        matches!(
            report.outcome,
            SagaExit::Finished(SagaOutcome::Completed { .. })
        ),
        "the custom saga did not complete"
    );
    Ok(())
}
