//! The rig the edge and attack tests share: a real `rescind sim` and a real
//! `rescind worker` process per test, over HTTP on loopback, in a temporary
//! directory, with helpers to read what the simulator really applied.
#![allow(dead_code)]

use crate::common::{self, effect_counts, log_tail, start_sim_with_faults, Proc};
use rescind::simconfig::simulator_channels_toml;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a saga may take to reach the state a test waits for.
pub const WAIT: Duration = Duration::from_secs(20);
/// The worker's periodic recovery: long, so that only the tests resume sagas.
pub const RECOVER_INTERVAL_MS: u64 = 3_600_000;

pub type Effects = BTreeMap<(String, String), u64>;

/// Effect counts of one application each.
pub fn once(pairs: &[(&str, &str)]) -> Effects {
    pairs
        .iter()
        .map(|(op, t)| (((*op).to_owned(), (*t).to_owned()), 1))
        .collect()
}

pub fn tbc_order(id: &str) -> Value {
    json!({"channel": "tmall-tbc", "order_id": id, "status": "WAIT_BUYER_PAY"})
}

pub fn damai_lock(id: &str) -> Value {
    json!({"channel": "damai", "order_id": id, "status": "WAIT_PAY", "stock_lock": id})
}

/// `POST /sagas` body: an unpaid TBC cancel, with a Damai lock if given.
pub fn tbc_cancel(order: &str, lock: Option<&str>, key: &str) -> Value {
    let mut v =
        json!({"kind": "cancel_unpaid", "channel": "tmall-tbc", "order_id": order, "key": key});
    if let Some(l) = lock {
        v["stock_lock"] = json!({"channel": "damai", "lock_id": l});
    }
    v
}

pub fn state_of(saga: &Value) -> &str {
    saga["summary"]["state"].as_str().unwrap_or("?")
}

pub fn reason_of(saga: &Value) -> &str {
    saga["summary"]["reason"].as_str().unwrap_or("")
}

/// Timeline records named `name` (`stuck`, `resolved`, `intent`...).
pub fn records<'a>(saga: &'a Value, name: &str) -> Vec<&'a Value> {
    saga["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["record"] == name)
        .collect()
}

#[derive(Debug)]
pub struct CliOut {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// One simulator (no faults until a test sets them), one worker at a time
/// on a sled journal, all in a temporary directory.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub sim: Proc,
    pub sim_url: String,
    pub http: reqwest::Client,
    pub cfg: PathBuf,
    pub worker: Option<Proc>,
    pub url: String,
    pub lives: usize,
}

impl Rig {
    pub async fn new(name: &str) -> Rig {
        Self::with_journal(name, None).await
    }

    /// `journal`: the sled directory (default: `journal` in the test's directory).
    pub async fn with_journal(name: &str, journal: Option<&Path>) -> Rig {
        Self::with_worker_keys(name, journal, "").await
    }

    /// Extra `[worker]` keys (`api_tokens_env`, `callback_listen`...).
    pub async fn with_worker_keys(name: &str, journal: Option<&Path>, worker_keys: &str) -> Rig {
        let dir = tempfile::Builder::new()
            .prefix(&format!("rescind-edges-{name}-"))
            .tempdir()
            .expect("tempdir");
        let (sim, sim_url) = start_sim_with_faults(dir.path(), 5, &json!({})).await;
        let journal = journal
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("journal"));
        let cfg = dir.path().join("rescind.toml");
        let text = format!(
            r#"# Written by the rescind-cli edge tests (tests/rig).
[journal]
path = "{journal}"

[engine]
attempts_max = 3
backoff_initial_ms = 20
backoff_max_ms = 100
attempt_timeout_ms = 2000
refund_poll_initial_ms = 100
refund_poll_max_ms = 300

[worker]
listen = "127.0.0.1:0"
callback_store = "{callbacks}"
recover_interval_ms = {RECOVER_INTERVAL_MS}
shutdown_grace_ms = 1000
compact_interval_ms = 0
{worker_keys}

{channels}"#,
            journal = journal.display(),
            callbacks = dir.path().join("callbacks.jsonl").display(),
            channels = simulator_channels_toml(&sim_url, &common::SECRETS, None),
        );
        std::fs::write(&cfg, text).expect("write config");
        Rig {
            dir,
            sim,
            sim_url,
            http: common::http_client(),
            cfg,
            worker: None,
            url: String::new(),
            lives: 0,
        }
    }

    /// The last lines of every log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = log_tail(&self.sim.log, 10);
        for i in 1..=self.lives {
            out.push('\n');
            out.push_str(&log_tail(
                &self.dir.path().join(format!("worker-{i}.log")),
                25,
            ));
        }
        out
    }

    /// Start `rescind worker` with the channel secrets, `envs` overriding them.
    pub async fn start_worker(&mut self, envs: &[(&str, &str)]) {
        self.start_worker_nofile(envs, None).await
    }

    /// [`Rig::start_worker`] with the worker's open-file limit set to `nofile`.
    pub async fn start_worker_nofile(&mut self, envs: &[(&str, &str)], nofile: Option<u64>) {
        assert!(self.worker.is_none(), "a worker is already running");
        self.lives += 1;
        let cfg = self.cfg.to_string_lossy().into_owned();
        let log = format!("worker-{}.log", self.lives);
        let mut w = common::spawn_proc_nofile(
            &["--config", &cfg, "-v", "worker"],
            self.dir.path(),
            &log,
            envs,
            nofile,
        )
        .expect("spawn the worker");
        match w.wait_listening().await {
            Ok((url, _)) => self.url = url,
            Err(e) => panic!("the worker did not start: {e}\n{}", self.logs()),
        }
        self.worker = Some(w);
    }

    /// SIGTERM the worker and wait for a clean exit (sled's lock released).
    pub async fn stop_worker(&mut self) {
        let mut w = self.worker.take().expect("no worker running");
        if let Err(e) = w.terminate(Duration::from_secs(15)).await {
            panic!("the worker did not stop cleanly: {e}\n{}", self.logs());
        }
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("HTTP: {e}\n{}", self.logs()));
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    /// `POST` to the worker.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.url)).json(body))
            .await
    }

    /// `GET` from the worker.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.url)))
            .await
    }

    /// Add rows to the simulator's order book.
    pub async fn orders(&self, rows: Value) {
        common::post_json(
            &self.http,
            &format!("{}/_admin/orders", self.sim_url),
            &rows,
        )
        .await
        .expect("add orders");
    }

    /// Replace the simulator's fault profile (`json!({})`: none).
    pub async fn faults(&self, profile: Value) {
        common::post_json(
            &self.http,
            &format!("{}/_admin/faults", self.sim_url),
            &profile,
        )
        .await
        .expect("set faults");
    }

    pub async fn effects(&self) -> Effects {
        effect_counts(&self.http, &self.sim_url)
            .await
            .expect("effect log")
    }

    /// The simulator's view of an order (`stock_lock_held`, `status`...).
    pub async fn sim_order(&self, channel: &str, id: &str) -> Value {
        common::get_json(
            &self.http,
            &format!("{}/_admin/orders/{channel}/{id}", self.sim_url),
        )
        .await
        .expect("simulator order")
    }

    pub async fn lock_held(&self, lock: &str) -> bool {
        self.sim_order("damai", lock).await["stock_lock_held"]
            .as_bool()
            .expect("stock_lock_held")
    }

    /// Start a saga over HTTP; it must be created.
    pub async fn start(&self, body: &Value) -> String {
        let (status, v) = self.post("/sagas", body).await;
        assert_eq!(status, 201, "POST /sagas {body}: {v}\n{}", self.logs());
        assert_eq!(v["created"], true, "{v}");
        v["saga_id"].as_str().expect("saga_id").to_owned()
    }

    /// `GET /sagas/{id}` until `pred` holds.
    pub async fn wait_saga(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            let (status, v) = self.get(&format!("/sagas/{id}")).await;
            if status == 200 && pred(&v) {
                return v;
            }
            if t0.elapsed() > WAIT {
                panic!(
                    "saga {id} is not {what} after {} s: HTTP {status} {v:#}\n{}",
                    WAIT.as_secs(),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the saga is stuck for the `n`th time (its `n`th `stuck` record).
    pub async fn wait_stuck(&self, id: &str, n: usize) -> Value {
        let v = self
            .wait_saga(id, &format!("stuck ({n} time(s))"), |v| {
                state_of(v) == "stuck" && records(v, "stuck").len() >= n && v["running"] == false
            })
            .await;
        eprintln!("saga {id} stuck: {}", reason_of(&v));
        v
    }

    pub async fn wait_completed(&self, id: &str) -> Value {
        self.wait_saga(id, "completed", |v| {
            matches!(state_of(v), "completed" | "failed" | "aborted")
        })
        .await
    }

    /// `POST /sagas/{id}/resume`: must be accepted.
    pub async fn resume(&self, id: &str) {
        let (status, v) = self.post(&format!("/sagas/{id}/resume"), &json!({})).await;
        assert_eq!(status, 202, "resume {id}: {v}\n{}", self.logs());
        assert_eq!(v["resumed"], true, "{v}");
    }

    /// `rescind --config CFG ARGS` with the channel secrets.
    pub async fn cli(&self, args: &[&str]) -> CliOut {
        let mut c = tokio::process::Command::new(common::exe());
        c.arg("--config")
            .arg(&self.cfg)
            .args(args)
            .current_dir(self.dir.path())
            .envs(common::SECRETS.vars())
            .env_remove("RESCIND_CONFIG")
            .env_remove("RUST_LOG")
            .env_remove("RUST_BACKTRACE")
            .stdin(std::process::Stdio::null());
        let out = tokio::time::timeout(Duration::from_secs(60), c.output())
            .await
            .expect("the command did not finish within 60 s")
            .expect("run rescind");
        CliOut {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Every saga in the journal, as the worker lists them.
    pub async fn listed(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut path = "/sagas?set=all&limit=1000".to_owned();
        loop {
            let (status, v) = self.get(&path).await;
            assert_eq!(status, 200, "{v}");
            out.extend(v["sagas"].as_array().cloned().unwrap_or_default());
            match v["next_cursor"].as_str() {
                Some(c) => path = format!("/sagas?set=all&limit=1000&cursor={c}"),
                None => return out,
            }
        }
    }

    /// Every saga in the journal, listed with `token`.
    pub async fn listed_with(&self, token: &str) -> Vec<Value> {
        let (status, v) = self
            .send(
                self.http
                    .get(format!("{}/sagas?set=all", self.url))
                    .bearer_auth(token),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v["sagas"].as_array().cloned().unwrap_or_default()
    }
}
