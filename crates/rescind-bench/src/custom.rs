//! The generic two-step custom saga: two plain HTTP POSTs to a trivial
//! upstream, each journaled with intent and outcome — the work a
//! general-purpose durable-execution engine does for a two-activity workflow.

use async_trait::async_trait;
use rescind_core::{
    Action, ChannelError, Decision, PermanentReason, SagaDefinition, SagaKind, SagaOutcome,
    SagaState, StepExecutor,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The saga kind registered by [`TwoPosts`].
pub const KIND: &str = "bench_two_posts";
/// The executor name its steps use.
pub const EXECUTOR: &str = "bench_post";

/// Two custom steps, then finish.
pub struct TwoPosts;

impl SagaDefinition for TwoPosts {
    fn kind(&self) -> SagaKind {
        SagaKind(KIND.into())
    }
    fn decide(&self, s: &SagaState) -> Decision {
        let done = s.steps.iter().filter(|st| st.outcome.is_some()).count();
        if let Some(Some(rescind_core::StepOutcome::Failed { error })) =
            s.steps.last().map(|st| st.outcome.as_ref())
        {
            return Decision::Finish(SagaOutcome::Failed {
                reason: error.to_string(),
            });
        }
        if done < 2 {
            Decision::Act(Action::Custom(rescind_core::action::Custom {
                name: EXECUTOR.into(),
                payload: json!({ "n": done }),
            }))
        } else {
            Decision::Finish(SagaOutcome::Completed {
                order: s.order.clone(),
                note: None,
            })
        }
    }
}

/// Performs a step as one `POST {url}` with the payload as JSON body, and
/// counts the time spent inside (to separate engine overhead from upstream time).
pub struct PostExecutor {
    client: reqwest::Client,
    url: String,
    busy_ns: AtomicU64,
}

impl PostExecutor {
    /// Post to `url` (the upstream's `/step`).
    pub fn new(client: reqwest::Client, url: String) -> Self {
        PostExecutor {
            client,
            url,
            busy_ns: AtomicU64::new(0),
        }
    }
    /// Nanoseconds spent inside `execute` so far.
    pub fn busy_ns(&self) -> u64 {
        self.busy_ns.load(Ordering::Relaxed)
    }
}

/// One POST, classified like a channel call: a connection failure before
/// sending is "not applied", anything later is "in doubt".
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    payload: &Value,
) -> Result<Value, ChannelError> {
    let resp = client.post(url).json(payload).send().await.map_err(|e| {
        if e.is_connect() {
            ChannelError::not_applied(format!("POST {url}: {e}"))
        } else {
            ChannelError::in_doubt(format!("POST {url}: {e}"))
        }
    })?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| ChannelError::in_doubt(format!("POST {url}: reading the body: {e}")))?;
    if !status.is_success() {
        return Err(ChannelError::permanent(
            PermanentReason::InvalidRequest,
            format!("POST {url}: HTTP {status}"),
        ));
    }
    serde_json::from_slice(&body).map_err(|e| {
        ChannelError::permanent(
            PermanentReason::InvalidRequest,
            format!("POST {url}: the answer is not JSON: {e}"),
        )
    })
}

#[async_trait]
impl StepExecutor for PostExecutor {
    async fn execute(&self, payload: &Value) -> Result<Value, ChannelError> {
        let t0 = Instant::now();
        let r = post(&self.client, &self.url, payload).await;
        self.busy_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }
}
