//! `/metrics` of a real `rescind worker` against the real simulator: sagas
//! run into several outcomes (completed, failed, stuck), a callback is
//! pushed, then a scrape over HTTP is parsed with a Prometheus text parser
//! (`prometheus-parse`) and its label values and counts are checked.

mod common;

use common::{log_tail, spawn_proc, start_sim_with_faults, Proc};
use prometheus_parse::{Sample, Scrape, Value as PValue};
use rescind::simconfig::simulator_channels_toml;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

struct Rig {
    dir: tempfile::TempDir,
    sim: Proc,
    sim_url: String,
    http: reqwest::Client,
    worker: Proc,
    url: String,
}

impl Rig {
    async fn new() -> Rig {
        let dir = tempfile::Builder::new()
            .prefix("rescind-metrics-")
            .tempdir()
            .expect("tempdir");
        let (sim, sim_url) = start_sim_with_faults(dir.path(), 7, &json!({})).await;
        let cfg = dir.path().join("rescind.toml");
        let text = format!(
            r#"# Written by crates/rescind-cli/tests/metrics.rs.
[journal]
path = "{journal}"

[engine]
attempts_max = 3
backoff_initial_ms = 20
backoff_max_ms = 100
attempt_timeout_ms = 2000

[worker]
listen = "127.0.0.1:0"
callback_store = "{callbacks}"
recover_interval_ms = 60000
shutdown_grace_ms = 1000
compact_interval_ms = 0

{channels}"#,
            journal = dir.path().join("journal").display(),
            callbacks = dir.path().join("callbacks.jsonl").display(),
            channels = simulator_channels_toml(&sim_url, &common::SECRETS, None),
        );
        std::fs::write(&cfg, text).expect("write config");
        let cfg_s = cfg.to_string_lossy().into_owned();
        let mut worker = spawn_proc(
            &["--config", &cfg_s, "-v", "worker"],
            dir.path(),
            "worker.log",
            &[],
        )
        .expect("spawn the worker");
        let url = match worker.wait_listening().await {
            Ok((url, _)) => url,
            Err(e) => panic!(
                "the worker did not start: {e}\n{}",
                log_tail(&worker.log, 30)
            ),
        };
        Rig {
            dir,
            sim,
            sim_url,
            http: common::http_client(),
            worker,
            url,
        }
    }

    fn logs(&self) -> String {
        format!(
            "{}\n{}",
            log_tail(&self.sim.log, 10),
            log_tail(&self.worker.log, 30)
        )
    }

    async fn admin(&self, path: &str, body: Value) {
        common::post_json(
            &self.http,
            &format!("{}/_admin/{path}", self.sim_url),
            &body,
        )
        .await
        .unwrap_or_else(|e| panic!("simulator {path}: {e}"));
    }

    async fn start(&self, order: &str, lock: Option<&str>) -> String {
        let mut body = json!({"kind": "cancel_unpaid", "channel": "tmall-tbc",
                              "order_id": order, "key": format!("k-{order}")});
        if let Some(l) = lock {
            body["stock_lock"] = json!({"channel": "damai", "lock_id": l});
        }
        let v = common::post_json(&self.http, &format!("{}/sagas", self.url), &body)
            .await
            .unwrap_or_else(|e| panic!("POST /sagas: {e}\n{}", self.logs()));
        v["saga_id"].as_str().expect("saga_id").to_owned()
    }

    /// Wait until the saga's state is `state` and it no longer runs.
    async fn wait_state(&self, id: &str, state: &str) {
        let t0 = Instant::now();
        loop {
            let v = common::get_json(&self.http, &format!("{}/sagas/{id}", self.url))
                .await
                .unwrap_or_default();
            if v["summary"]["state"] == state && v["running"] == false {
                return;
            }
            assert!(
                t0.elapsed() < WAIT,
                "saga {id} is not {state}: {v:#}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn scrape(&self) -> (String, Scrape) {
        let r = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(r.status().as_u16(), 200);
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        let text = r.text().await.expect("body");
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parse");
        (text, scrape)
    }
}

fn number(v: &PValue) -> f64 {
    match v {
        PValue::Counter(x) | PValue::Gauge(x) | PValue::Untyped(x) => *x,
        PValue::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
        PValue::Summary(_) => f64::NAN,
    }
}

/// Samples of `metric` whose labels include every pair of `labels`.
fn find<'a>(s: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    s.samples
        .iter()
        .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .collect()
}

/// The value of the one sample of `metric` with exactly these labels
/// (besides `le`); a missing series is a failure naming it.
fn one(s: &Scrape, text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found = find(s, metric, labels);
    assert_eq!(
        found.len(),
        1,
        "{metric}{labels:?}: expected one series, found {}\n{text}",
        found.len()
    );
    number(&found[0].value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_sagas_steps_and_errors_by_label() {
    let mut rig = Rig::new().await;
    let orders: Vec<Value> = ["C1", "C2", "C3", "F1", "S1"]
        .iter()
        .map(|id| json!({"channel": "tmall-tbc", "order_id": id, "status": "WAIT_BUYER_PAY"}))
        .chain([json!({"channel": "damai", "order_id": "LS1", "status": "WAIT_PAY", "stock_lock": "LS1"})])
        .collect();
    rig.admin("orders", json!(orders)).await;

    // Three completed.
    for o in ["C1", "C2", "C3"] {
        let id = rig.start(o, None).await;
        rig.wait_state(&id, "completed").await;
    }
    // One failed: the cancel is refused permanently (TOP code 41).
    rig.admin(
        "faults",
        json!({"tmall.tbc.order.cancel": {"permanent": 1.0}}),
    )
    .await;
    let failed = rig.start("F1", None).await;
    rig.wait_state(&failed, "failed").await;
    // One stuck: the cancel applies, the stock release is refused permanently.
    rig.admin(
        "faults",
        json!({"alibaba.damai.yuntoc.order.cancellockstock": {"permanent": 1.0}}),
    )
    .await;
    let stuck = rig.start("S1", Some("LS1")).await;
    rig.wait_state(&stuck, "stuck").await;
    // One callback that is not one (answered 400 or 401, counted either way).
    let cb = rig
        .http
        .post(format!("{}/callbacks/pandapon", rig.url))
        .body("not json")
        .send()
        .await
        .expect("POST callback");
    assert!(cb.status().is_client_error(), "{}", cb.status());

    let (text, s) = rig.scrape().await;
    let tbc = [("kind", "cancel_unpaid"), ("channel", "tmall-tbc")];
    assert_eq!(one(&s, &text, "rescind_sagas_started_total", &tbc), 5.0);
    let by_outcome = |o: &'static str| {
        let mut l = tbc.to_vec();
        l.push(("outcome", o));
        one(&s, &text, "rescind_sagas_finished_total", &l)
    };
    assert_eq!(by_outcome("completed"), 3.0, "{text}");
    assert_eq!(by_outcome("failed"), 1.0, "{text}");
    assert!(
        find(
            &s,
            "rescind_sagas_finished_total",
            &[("outcome", "aborted")]
        )
        .is_empty(),
        "no saga was aborted: {text}"
    );
    assert_eq!(one(&s, &text, "rescind_sagas_stuck_total", &tbc), 1.0);
    assert_eq!(one(&s, &text, "rescind_sagas_stuck_now", &[]), 1.0);
    assert_eq!(one(&s, &text, "rescind_sagas_in_flight", &[]), 0.0);
    assert_eq!(one(&s, &text, "rescind_sagas_parked", &[]), 0.0);

    // Steps by channel, action and result: four cancels went through (three
    // completed, the stuck one's), the failed one was refused.
    let step = |channel: &str, action: &str, result: &str| {
        find(
            &s,
            "rescind_steps_total",
            &[("channel", channel), ("action", action), ("result", result)],
        )
        .iter()
        .map(|x| number(&x.value))
        .sum::<f64>()
    };
    assert_eq!(step("tmall-tbc", "cancel_unpaid", "ok"), 4.0, "{text}");
    assert_eq!(
        step("tmall-tbc", "cancel_unpaid", "permanent"),
        1.0,
        "{text}"
    );
    assert!(
        step("damai", "release_stock", "permanent") >= 1.0,
        "the stock release went to damai: {text}"
    );
    assert_eq!(step("damai", "release_stock", "ok"), 0.0, "{text}");

    // Upstream errors carry TOP's code and sub_code.
    let errs = find(
        &s,
        "rescind_upstream_errors_total",
        &[("channel", "tmall-tbc"), ("code", "41")],
    );
    assert_eq!(errs.len(), 1, "{text}");
    assert!(
        errs[0]
            .labels
            .get("sub_code")
            .is_some_and(|c| c.starts_with("isv.invalid-parameter")),
        "{:?}",
        errs[0].labels
    );
    assert_eq!(number(&errs[0].value), 1.0);
    assert!(!find(&s, "rescind_upstream_errors_total", &[("channel", "damai")]).is_empty());

    // Latency histograms: one observation per call, one per ended saga.
    let calls =
        step("tmall-tbc", "cancel_unpaid", "ok") + step("tmall-tbc", "cancel_unpaid", "permanent");
    assert_eq!(
        one(
            &s,
            &text,
            "rescind_step_latency_ms_count",
            &[("channel", "tmall-tbc"), ("action", "cancel_unpaid")]
        ),
        calls
    );
    assert_eq!(
        one(
            &s,
            &text,
            "rescind_saga_duration_ms_count",
            &[("kind", "cancel_unpaid"), ("outcome", "completed")]
        ),
        3.0
    );
    assert_eq!(
        one(
            &s,
            &text,
            "rescind_saga_duration_ms_count",
            &[("kind", "cancel_unpaid"), ("outcome", "stuck")]
        ),
        1.0
    );

    // The sled journal reports its group commits.
    let groups = one(&s, &text, "rescind_journal_group_size_count", &[]);
    let records = one(&s, &text, "rescind_journal_group_size_sum", &[]);
    assert!(
        groups >= 1.0 && records >= groups,
        "{groups} groups, {records} records"
    );
    assert_eq!(
        one(&s, &text, "rescind_journal_flush_latency_us_count", &[]),
        groups
    );

    // Refusals and callbacks keep their names and labels.
    for reason in ["missing", "unknown", "scope"] {
        assert_eq!(
            one(
                &s,
                &text,
                "rescind_api_refused_total",
                &[("reason", reason)]
            ),
            0.0
        );
    }
    let callbacks: f64 = find(&s, "rescind_callbacks_total", &[])
        .iter()
        .map(|x| number(&x.value))
        .sum();
    assert_eq!(callbacks, 1.0, "{text}");
    assert_eq!(
        find(&s, "rescind_callback_messages_total", &[]).len(),
        12,
        "3 types × 4 verdicts: {text}"
    );

    // A resumed stuck saga is no longer stuck now; it completes once the fault is gone.
    rig.admin("faults", json!({})).await;
    let r = rig
        .http
        .post(format!("{}/sagas/{stuck}/resume", rig.url))
        .json(&json!({}))
        .send()
        .await
        .expect("resume");
    assert_eq!(r.status().as_u16(), 202);
    rig.wait_state(&stuck, "completed").await;
    let (text, s) = rig.scrape().await;
    assert_eq!(one(&s, &text, "rescind_sagas_stuck_now", &[]), 0.0);
    assert_eq!(by_outcome_of(&s, &text, "completed"), 4.0);
    assert_eq!(
        one(
            &s,
            &text,
            "rescind_steps_total",
            &[
                ("channel", "damai"),
                ("action", "release_stock"),
                ("result", "ok")
            ]
        ),
        1.0
    );
    rig.worker
        .terminate(Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("worker stop: {e}"));
    drop(rig.dir);
}

fn by_outcome_of(s: &Scrape, text: &str, outcome: &str) -> f64 {
    one(
        s,
        text,
        "rescind_sagas_finished_total",
        &[
            ("kind", "cancel_unpaid"),
            ("channel", "tmall-tbc"),
            ("outcome", outcome),
        ],
    )
}
