//! Attacks on the worker's doors (issue 14), over real HTTP against a real
//! `rescind worker` process and a real `rescind sim`: each attempt is
//! counted and the test fails if any gets through.
//!
//! | test | attack |
//! |---|---|
//! | `the_api_needs_a_token_with_the_right_scope_and_callbacks_a_signature` | every API route without a token, with an unknown token and with a read token on write routes (401/403, nothing journaled, nothing upstream, refusals counted in `/metrics`); the API and the callback route on separate listeners; unsigned, wrongly signed and stale callbacks (401, not stored), a replayed genuine one (stored once) |
//! | `a_public_address_without_tokens_is_refused_at_start` | `--listen 0.0.0.0:0` without tokens: exit 2, one line |
//! | `a_junk_flood_is_refused_and_stores_nothing` | 1,000 distinct 200 KB junk callbacks (401, the store stays empty); bodies over the limit (413) on both listeners |
//! | `slow_header_sockets_cannot_starve_the_worker` | 2,000 slow-header sockets against a worker whose open-file limit is 512: `/healthz` answers within 1 s throughout, every socket is closed after the header timeout, no `Too many open files` |
//! | `control_characters_are_escaped_in_logs_and_cli_output` | an order id and a reason carrying CR LF and escape sequences: refused / escaped in the worker log and in `journal list` / `journal show` |

mod common;
mod rig;

use rig::*;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKENS_ENV: &str = "RESCIND_EDGES_API_TOKENS";
const WRITE_TOKEN: &str = "w-0123456789abcdef0123";
const READ_TOKEN: &str = "r-0123456789abcdef0123";

/// The value of one series in a Prometheus text page.
fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

/// `/metrics`, read with the read token.
async fn scrape(rig: &Rig) -> String {
    let r = rig
        .http
        .get(format!("{}/metrics", rig.url))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /metrics: {e}\n{}", rig.logs()));
    assert_eq!(r.status().as_u16(), 200);
    r.text().await.unwrap_or_default()
}

/// The callback listener's URL, as the worker printed it.
fn callback_url(rig: &Rig) -> String {
    let log = std::fs::read_to_string(rig.dir.path().join(format!("worker-{}.log", rig.lives)))
        .unwrap_or_default();
    log.lines()
        .find_map(|l| l.split("callbacks on ").nth(1))
        .map(|u| common::strip_ansi(u).trim().to_owned())
        .unwrap_or_else(|| panic!("no callback address in the log:\n{}", rig.logs()))
}

/// A worker with tokens and a separate callback listener.
async fn locked_rig(name: &str, extra: &str) -> Rig {
    let mut rig = Rig::with_worker_keys(
        name,
        None,
        &format!("api_tokens_env = \"{TOKENS_ENV}\"\ncallback_listen = \"127.0.0.1:0\"\n{extra}"),
    )
    .await;
    let tokens = format!("ops:write:{WRITE_TOKEN},grafana:read:{READ_TOKEN}");
    rig.start_worker(&[(TOKENS_ENV, tokens.as_str())]).await;
    rig
}

fn store_len(rig: &Rig) -> u64 {
    std::fs::metadata(rig.dir.path().join("callbacks.jsonl"))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_api_needs_a_token_with_the_right_scope_and_callbacks_a_signature() {
    let mut rig = locked_rig("attacks", "").await;
    rig.orders(json!([tbc_order("A1"), damai_lock("AL1")]))
        .await;
    let id = "00000000-0000-0000-0000-000000000001";
    let routes: Vec<(reqwest::Method, String, bool)> = vec![
        (reqwest::Method::GET, "/sagas".into(), false),
        (reqwest::Method::GET, "/sagas?set=all".into(), false),
        (reqwest::Method::GET, format!("/sagas/{id}"), false),
        (reqwest::Method::GET, "/stats".into(), false),
        (reqwest::Method::GET, "/metrics".into(), false),
        (reqwest::Method::POST, "/sagas".into(), true),
        (reqwest::Method::POST, format!("/sagas/{id}/abort"), true),
        (reqwest::Method::POST, format!("/sagas/{id}/resume"), true),
        (reqwest::Method::POST, format!("/sagas/{id}/resolve"), true),
    ];
    let start = tbc_cancel("A1", Some("AL1"), "k-attack");
    let mut attempts = 0;
    let mut succeeded = Vec::new();
    for (method, path, write) in &routes {
        let url = format!("{}{path}", rig.url);
        let creds: Vec<Option<String>> = if *write {
            vec![
                None,
                Some("Bearer not-a-token-0000000000".into()),
                Some(format!("Bearer {READ_TOKEN}")),
                Some(WRITE_TOKEN.into()),
            ]
        } else {
            vec![None, Some("Bearer not-a-token-0000000000".into())]
        };
        for auth in creds {
            attempts += 1;
            let mut req = rig.http.request(method.clone(), &url).json(&start);
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            let (status, body) = rig.send(req).await;
            let want = match &auth {
                Some(a) if a.contains(READ_TOKEN) => 403,
                _ => 401,
            };
            if status != want || body["error"].as_str().is_none() {
                succeeded.push(format!("{method} {path} with {auth:?}: {status} {body}"));
            }
        }
    }
    assert!(attempts >= 20, "{attempts} attempts");
    assert!(
        succeeded.is_empty(),
        "attacks that got through: {succeeded:#?}"
    );
    // Every refusal is counted, by reason.
    let page = scrape(&rig).await;
    let refused: f64 = ["missing", "unknown", "scope"]
        .iter()
        .map(|r| {
            metric(
                &page,
                &format!("rescind_api_refused_total{{reason=\"{r}\"}}"),
            )
            .unwrap_or_else(|| panic!("no refusal series for {r}:\n{page}"))
        })
        .sum();
    assert_eq!(refused as usize, attempts, "{page}");
    assert_eq!(
        metric(&page, "rescind_api_refused_total{reason=\"scope\"}"),
        Some(4.0),
        "one read token on each write route"
    );
    // Nothing was journaled, nothing sent upstream.
    let list = rig
        .send(
            rig.http
                .get(format!("{}/sagas?set=all", rig.url))
                .bearer_auth(READ_TOKEN),
        )
        .await;
    assert_eq!(list.0, 200, "{list:?}");
    assert_eq!(
        list.1["sagas"].as_array().map(Vec::len),
        Some(0),
        "{list:?}"
    );
    assert!(
        rig.effects().await.is_empty(),
        "upstream: {:?}",
        rig.effects().await
    );
    // Health stays open.
    let health = rig.send(rig.http.get(format!("{}/healthz", rig.url))).await;
    assert_eq!(health.0, 200);
    // The write token works, and its name is journaled as who started it.
    let (status, started) = rig
        .send(
            rig.http
                .post(format!("{}/sagas", rig.url))
                .bearer_auth(WRITE_TOKEN)
                .json(&start),
        )
        .await;
    assert_eq!(status, 201, "{started}");
    let saga = started["saga_id"].as_str().expect("saga_id").to_owned();
    let (_, shown) = rig
        .send(
            rig.http
                .get(format!("{}/sagas/{saga}", rig.url))
                .bearer_auth(READ_TOKEN),
        )
        .await;
    let first = &shown["timeline"][0]["detail"];
    assert_eq!(first["by"], "ops", "{shown}");
    // The callback route is not on the API listener, and the API is not on
    // the callback listener.
    let cb_url = callback_url(&rig);
    assert_ne!(cb_url, rig.url);
    let on_api = rig
        .send(
            rig.http
                .post(format!("{}/callbacks/pandapon", rig.url))
                .body("{}"),
        )
        .await;
    assert_eq!(
        on_api.0, 401,
        "the API listener needs a token for everything: {on_api:?}"
    );
    let api_on_cb = rig.send(rig.http.get(format!("{cb_url}/sagas"))).await;
    assert_eq!(api_on_cb.0, 404, "{api_on_cb:?}");
    // Forged callbacks on the public listener: refused, stored nowhere.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let push = |ts: u64| {
        format!(
            r#"{{"messageType":"REFUND_STATUS_CHANGE","messagePlatform":0,"messageBody":{{"orderId":"T1","refundId":"R1","refundStatus":"SUCCESS"}},"timestamp":{ts}}}"#
        )
    };
    let sign = |b: &str, secret: &str| {
        rescind_wire::sign::pandapon_message_signature(
            b.as_bytes(),
            &rescind_wire::sign::Secret::new(secret),
        )
    };
    let forged: Vec<(&str, String, Option<String>)> = vec![
        ("unsigned", push(now_ms), None),
        (
            "wrong secret",
            push(now_ms),
            Some(sign(&push(now_ms), "guess")),
        ),
        (
            "timestamp 1",
            push(1),
            Some(sign(&push(1), rescind_sim::defaults::PANDAPON_SECRET)),
        ),
    ];
    for (what, body, auth) in &forged {
        let mut req = rig
            .http
            .post(format!("{cb_url}/callbacks/pandapon"))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let (status, answer) = rig.send(req).await;
        assert_eq!(status, 401, "{what}: {answer}");
    }
    assert_eq!(store_len(&rig), 0, "a forged callback was stored");
    // A correctly signed push is accepted (the same secret the simulator
    // uses); replayed as it was, it is acknowledged but not stored twice.
    let good = push(now_ms);
    let mut stored_once = 0;
    for round in ["genuine", "replayed"] {
        let (status, answer) = rig
            .send(
                rig.http
                    .post(format!("{cb_url}/callbacks/pandapon"))
                    .header(
                        "authorization",
                        sign(&good, rescind_sim::defaults::PANDAPON_SECRET),
                    )
                    .body(good.clone()),
            )
            .await;
        assert_eq!(status, 200, "{round}: {answer}\n{}", rig.logs());
        if round == "genuine" {
            stored_once = store_len(&rig);
            assert!(stored_once > 0, "the genuine push was not stored");
        }
    }
    assert_eq!(
        store_len(&rig),
        stored_once,
        "a replayed push was stored twice"
    );
    let page = scrape(&rig).await;
    assert_eq!(
        metric(&page, "rescind_callbacks_total{verdict=\"refused\"}"),
        Some(forged.len() as f64),
        "{page}"
    );
    assert_eq!(
        metric(&page, "rescind_callbacks_total{verdict=\"duplicate\"}"),
        Some(1.0),
        "{page}"
    );
    rig.stop_worker().await;
}

#[tokio::test]
async fn a_public_address_without_tokens_is_refused_at_start() {
    let rig = Rig::new("public").await;
    let cfg = rig.cfg.to_string_lossy().into_owned();
    let out = std::process::Command::new(common::exe())
        .args(["--config", &cfg, "worker", "--listen", "0.0.0.0:0"])
        .envs(common::SECRETS.vars())
        .output()
        .expect("run rescind worker");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("refusing to serve the API on 0.0.0.0:0 without authentication")
            && lines[0].contains("api_tokens_env"),
        "{stderr}"
    );
}

/// Send raw bytes on a fresh connection and read the status line of the answer.
async fn raw_status(addr: &str, request: &[u8]) -> Result<u16, String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {head:?}"))
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junk_flood_is_refused_and_stores_nothing() {
    let mut rig = locked_rig("junk", "").await;
    let cb_url = callback_url(&rig);
    let before = store_len(&rig);
    let flood = 1_000usize;
    let junk_kb = 200usize;
    let pad = "x".repeat(junk_kb * 1024);
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    for i in 0..flood {
        let http = rig.http.clone();
        let url = format!("{cb_url}/callbacks/pandapon");
        // Distinct messages; half carry a made-up signature.
        let body = format!(
            r#"{{"messageType":"REFUND_STATUS_CHANGE","messagePlatform":0,"messageBody":{{"orderId":"J{i}","refundId":"R{i}","refundStatus":"SUCCESS","pad":"{pad}"}},"timestamp":{i}}}"#
        );
        let gate = gate.clone();
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let mut req = http
                .post(url)
                .header("content-type", "application/json")
                .body(body);
            if i % 2 == 1 {
                req = req.header("authorization", format!("{i:064x}"));
            }
            match req.send().await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            }
        });
    }
    let mut statuses = std::collections::BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        *statuses.entry(r.unwrap_or(0)).or_insert(0usize) += 1;
    }
    eprintln!(
        "junk flood: {flood} x {junk_kb} KB in {:.1} s: {statuses:?}",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        statuses.get(&401).copied().unwrap_or(0),
        flood,
        "every junk callback must be refused 401: {statuses:?}"
    );
    assert_eq!(store_len(&rig), before, "junk reached the callback store");
    // Bodies over the limit: 413 on both listeners, before anything is read.
    let big = 1024 * 1024;
    let cb = raw_status(
        &host_port(&cb_url),
        format!("POST /callbacks/pandapon HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {big}\r\n\r\n{{").as_bytes(),
    )
    .await;
    assert_eq!(cb, Ok(413), "callback listener");
    let api = raw_status(
        &host_port(&rig.url),
        format!("POST /sagas HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITE_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {big}\r\n\r\n{{").as_bytes(),
    )
    .await;
    assert_eq!(api, Ok(413), "API listener");
    assert_eq!(store_len(&rig), before);
    assert!(
        rig.listed_with(READ_TOKEN).await.is_empty(),
        "a saga was journaled"
    );
    let page = scrape(&rig).await;
    assert_eq!(
        metric(&page, "rescind_callbacks_total{verdict=\"refused\"}"),
        Some(flood as f64),
        "{page}"
    );
    rig.stop_worker().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_sockets_cannot_starve_the_worker() {
    // The client side holds 2,000 sockets.
    let _ = rlimit::increase_nofile_limit(8192);
    let header_timeout_ms = 2_000u64;
    let mut rig = Rig::with_worker_keys(
        "slow",
        None,
        &format!("header_read_timeout_ms = {header_timeout_ms}\nmax_connections = 1024"),
    )
    .await;
    // The open-file limit the worker ran out under before (issue 14).
    rig.start_worker_nofile(&[], Some(512)).await;
    let addr = host_port(&rig.url);
    let sockets = 2_000usize;
    let health = |rig_url: String| async move {
        // A fresh client each time: no pooled connection to lean on.
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("client");
        let t = Instant::now();
        let r = http.get(format!("{rig_url}/healthz")).send().await;
        (r.map(|r| r.status().as_u16()).unwrap_or(0), t.elapsed())
    };
    let mut open = Vec::with_capacity(sockets);
    let mut connect_failed = 0usize;
    let mut slow_checks = Vec::new();
    let t0 = Instant::now();
    for i in 0..sockets {
        match tokio::net::TcpStream::connect(&addr).await {
            Ok(mut s) => {
                // A request head that never ends.
                let _ = s
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")
                    .await;
                open.push(s);
            }
            Err(_) => connect_failed += 1,
        }
        if i % 500 == 499 {
            slow_checks.push(health(rig.url.clone()).await);
        }
    }
    eprintln!(
        "opened {} slow sockets in {:.1} s ({connect_failed} refused at connect)",
        open.len(),
        t0.elapsed().as_secs_f64()
    );
    // Trickle a byte a second on every socket while health is checked.
    for _ in 0..3 {
        for s in open.iter_mut() {
            let _ = s.try_write(b"a");
        }
        slow_checks.push(health(rig.url.clone()).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (i, (status, took)) in slow_checks.iter().enumerate() {
        assert_eq!(
            *status,
            200,
            "health check {i} failed (took {took:?}) with slow sockets open\n{}",
            rig.logs()
        );
        assert!(
            *took < Duration::from_secs(1),
            "health check {i} took {took:?}"
        );
    }
    // After the header timeout every slow socket has been closed by the worker.
    tokio::time::sleep(Duration::from_millis(header_timeout_ms + 1_000)).await;
    let mut still_open = 0usize;
    let mut reads = tokio::task::JoinSet::new();
    for mut s in open {
        reads.spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return true,
                    // A 408 or 400 answer before the close is fine.
                    Ok(Ok(_)) => continue,
                    Err(_) => return false,
                }
            }
        });
    }
    while let Some(closed) = reads.join_next().await {
        if !closed.unwrap_or(false) {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "slow sockets left open after the header timeout"
    );
    let (status, took) = health(rig.url.clone()).await;
    assert_eq!(status, 200, "{took:?}");
    // The worker counted what it did: idle sockets evicted at the cap.
    let page = rig
        .http
        .get(format!("{}/metrics", rig.url))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .unwrap_or_default();
    let evicted = metric(
        &page,
        "rescind_http_connections_total{listener=\"api\",event=\"evicted\"}",
    )
    .unwrap_or_else(|| panic!("no eviction series:\n{page}"));
    assert!(
        evicted >= (sockets - 512) as f64,
        "{evicted} evictions for {sockets} sockets under a 512 file limit"
    );
    let open_now = metric(&page, "rescind_http_connections_open{listener=\"api\"}")
        .unwrap_or_else(|| panic!("no open-connections gauge:\n{page}"));
    assert!(open_now <= 4.0, "{open_now} connections still open");
    let log = std::fs::read_to_string(rig.dir.path().join("worker-1.log")).unwrap_or_default();
    assert!(
        !log.contains("Too many open files"),
        "the worker ran out of file descriptors:\n{}",
        rig.logs()
    );
    assert!(
        log.contains("lowered to fit the open-file limit"),
        "max_connections was not fitted to the limit of 512:\n{}",
        rig.logs()
    );
    rig.stop_worker().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_are_escaped_in_logs_and_cli_output() {
    let mut rig = Rig::new("ctl").await;
    rig.orders(json!([tbc_order("C1")])).await;
    rig.start_worker(&[]).await;
    let forged_line = "2026-01-01T00:00:00.000000Z  INFO forged";
    // An order id with CR LF and an escape sequence: refused before anything is journaled.
    let bad_id = format!("C9\r\n{forged_line}: \u{1b}[31mred");
    let mut body = tbc_cancel("C1", None, "k-ctl-1");
    body["order"]["order_id"] = json!(bad_id);
    let (status, v) = rig.post("/sagas", &body).await;
    assert_eq!(status, 400, "{v}");
    // A free-text reason with the same: accepted, but never printed raw.
    let mut body = tbc_cancel("C1", None, "k-ctl-2");
    body["reason"] = json!(format!("refund\r\n{forged_line}-reason \u{1b}[2J"));
    let id = rig.start(&body).await;
    rig.wait_completed(&id).await;
    rig.stop_worker().await;
    let log = std::fs::read_to_string(rig.dir.path().join("worker-1.log")).unwrap_or_default();
    for line in log.lines() {
        assert!(
            !common::strip_ansi(line).starts_with(forged_line),
            "a forged line in the worker log: {line:?}"
        );
    }
    assert!(
        !log.contains("\u{1b}[31mred") && !log.contains("\u{1b}[2J"),
        "a raw escape sequence in the worker log"
    );
    for args in [vec!["journal", "list"], vec!["journal", "show", &id]] {
        let out = rig.cli(&args).await;
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        assert!(
            !out.stdout.contains('\u{1b}') && !out.stdout.contains('\r'),
            "{args:?} printed a control character: {:?}",
            out.stdout
        );
        assert!(
            !out.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(forged_line)),
            "{args:?} printed a forged line: {}",
            out.stdout
        );
    }
    let shown = rig.cli(&["journal", "show", &id]).await;
    assert!(
        shown.stdout.contains("refund\\r\\n"),
        "journal show shows the reason escaped: {}",
        shown.stdout
    );
}
