//! The admin API, the in-process transport, and the binary's contract.

mod common;

use common::*;
use rescind_sim::{FaultKind, FaultProfile, FaultSpec, Mix, SimConfig, SimTransport};
use rescind_wire::sign::SignMethod;
use rescind_wire::transport::{HttpRequest, Transport, TransportError};
use serde_json::json;

#[tokio::test]
async fn admin_orders_state_effects_reset() {
    let h = Harness::start(SimConfig {
        fixture: vec![order("tmall-tbc", "FX", "WAIT_BUYER_PAY")],
        ..SimConfig::default()
    })
    .await;
    let (s, v) = h
        .admin_post(
            "/_admin/orders",
            &json!([
                {"channel": "tmall-tbc", "order_id": "A", "status": "WAIT_BUYER_PAY"},
                {"channel": "pandapon-taobao", "order_id": "B", "status": "WAIT_SELLER_SEND_GOODS",
                 "refund": {"refund_id": "RB", "status": "WAIT_SELLER_AGREE"}},
                {"channel": "damai", "order_id": "C", "status": "WAIT_PAY", "stock_lock": "C"}
            ]),
        )
        .await;
    assert_eq!((s, v["added"].as_u64()), (200, Some(3)), "{v}");
    // Invalid rows: nothing is added, every error is named.
    let (s, v) = h
        .admin_post(
            "/_admin/orders",
            &json!({"orders": [
                {"channel": "tmall-tbc", "order_id": "Z", "status": "WAIT_BUYER_PAY"},
                {"channel": "ebay", "order_id": "Y", "status": "x"},
                {"channel": "pandapon-1688", "order_id": "12", "status": "PAID"}
            ]}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["errors"].as_array().unwrap().len(), 2, "{v}");
    assert!(h.sim.order("tmall-tbc", "Z").is_none());
    let (s, _) = h.admin_post("/_admin/orders", &json!("nope")).await;
    assert_eq!(s, 400);

    let (s, v) = h.admin_get("/_admin/orders/pandapon-taobao/B").await;
    assert_eq!(s, 200);
    assert_eq!(v["refund_status"], "WAIT_SELLER_AGREE", "{v}");
    let (s, v) = h.admin_get("/_admin/refunds/pandapon-taobao/RB").await;
    assert_eq!((s, v["order_id"].as_str()), (200, Some("B")));
    let (s, _) = h.admin_get("/_admin/orders/tmall-tbc/none").await;
    assert_eq!(s, 404);
    let (s, _) = h.admin_get("/_admin/refunds/tmall-tbc/none").await;
    assert_eq!(s, 404);

    let v = h
        .top(
            "tmall.tbc.order.cancel",
            &[("out_order_no", "A"), ("source_site", "X")],
        )
        .await;
    assert_eq!(
        v["tmall_tbc_order_cancel_response"]["result"]["success"],
        true
    );
    let (_, v) = h.admin_get("/_admin/effects").await;
    assert_eq!(v["effects"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(
        v["effects"][0]["request"]["params"]["out_order_no"], "A",
        "{v}"
    );
    assert_eq!(
        v["counts"][0],
        json!({"op": "cancel_unpaid", "target": "tmall-tbc:A", "count": 1})
    );
    let (_, st) = h.admin_get("/_admin/state").await;
    assert_eq!(st["orders"].as_array().unwrap().len(), 4, "{st}");
    assert_eq!(st["stock_locks"]["C"], true);
    assert_eq!(st["effects"], 1);

    let (s, _) = h.admin_post("/_admin/reset", &json!({})).await;
    assert_eq!(s, 200);
    assert!(h.sim.effects().is_empty());
    assert!(h.sim.order("tmall-tbc", "A").is_none());
    assert!(
        h.sim.order("tmall-tbc", "FX").is_some(),
        "the fixture is reloaded"
    );
}

#[tokio::test]
async fn admin_generate_and_schedule() {
    let h = Harness::new().await;
    let (s, v) = h
        .admin_post(
            "/_admin/generate",
            &json!({"seed": 5, "n": 40, "mix": {"channels": ["tmall-tbc"], "unpaid": 1}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let rows = v["orders"].as_array().unwrap();
    assert_eq!(rows.len(), 40);
    assert!(rows.iter().all(|r| r["status"] == "WAIT_BUYER_PAY"), "{v}");
    assert_eq!(rows[0]["order_id"], "T5-0");
    // The same seed gives the same rows through the library.
    let again = h.sim.generate(
        5,
        40,
        &Mix {
            channels: vec!["tmall-tbc".into()],
            unpaid: 1,
            paid: 0,
            shipped: 0,
            cancelled: 0,
            refund_open: 0,
            refunded: 0,
        },
    );
    assert_eq!(serde_json::to_value(again).unwrap(), v["orders"]);
    let (s, _) = h
        .admin_post("/_admin/generate", &json!({"seed": 1, "n": 10_000_000}))
        .await;
    assert_eq!(s, 400);

    let (s, v) = h
        .admin_post(
            "/_admin/schedule",
            &json!([{"after_ms": 0, "channel": "tmall-tbc", "order_id": "T5-1", "action": "pay"},
                    {"after_ms": 0, "channel": "tmall-tbc", "order_id": "T5-2", "action": "refund_complete_typo"}]),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = h
        .admin_post(
            "/_admin/schedule",
            &json!({"after_ms": 0, "channel": "tmall-tbc", "order_id": "T5-1", "action": "pay"}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, o) = h.admin_get("/_admin/orders/tmall-tbc/T5-1").await;
    assert_eq!(o["status"], "WAIT_SELLER_SEND_GOODS", "{o}");
    let (_, st) = h.admin_get("/_admin/state").await;
    assert_eq!(st["event_history"][0]["applied"], true, "{st}");
}

/// In-process transport: same envelopes, lost responses as `NoResponse`
/// after the effect is applied.
#[tokio::test]
async fn sim_transport_in_process() {
    let sim = rescind_sim::Sim::new(SimConfig::default());
    sim.add_order(order("tmall-tbc", "I1", "WAIT_BUYER_PAY"));
    sim.add_order(order("tmall-tbc", "I2", "WAIT_BUYER_PAY"));
    let t = SimTransport::new(&sim);
    let ts = rescind_wire::sign::top_timestamp(sim.config().clock.now_ms());
    let req = |id: &str| HttpRequest {
        method: http::Method::POST,
        url: "http://sim.invalid/router/rest".into(),
        headers: vec![(
            "content-type".into(),
            "application/x-www-form-urlencoded".into(),
        )],
        body: form(&top_params(
            "tmall.tbc.order.cancel",
            &[("out_order_no", id), ("source_site", "X")],
            &ts,
            SignMethod::Md5,
        ))
        .into(),
    };
    let r = t.send(req("I1")).await.unwrap();
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v["tmall_tbc_order_cancel_response"]["result"]["success"], true,
        "{v}"
    );

    for mode in [
        rescind_sim::LostResponseMode::Drop,
        rescind_sim::LostResponseMode::GatewayTimeout,
    ] {
        sim.set_faults(FaultProfile::everywhere(FaultSpec {
            lost_response_mode: mode,
            ..FaultSpec::always(FaultKind::LostResponse)
        }));
        let e = t.send(req("I2")).await.unwrap_err();
        assert!(matches!(e, TransportError::NoResponse(_)), "{e:?}");
    }
    assert_eq!(
        sim.effect_counts()[&("cancel_unpaid".to_owned(), "tmall-tbc:I2".to_owned())],
        1
    );

    // PandaPon in-process, headers included.
    sim.set_faults(FaultProfile::none());
    let r = t
        .send(HttpRequest {
            method: http::Method::GET,
            url: "http://sim.invalid/v2/taobao/order/detail/1".into(),
            headers: pp_headers_at(sim.config().clock.now_ms(), None),
            body: Default::default(),
        })
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["code"], 404, "{v}");
}

/// Under tokio's paused clock, timestamp windows and scheduled events follow
/// virtual time.
#[tokio::test(start_paused = true)]
async fn paused_time_drives_scheduled_events() {
    let sim = rescind_sim::Sim::new(SimConfig {
        clock: std::sync::Arc::new(rescind_core::TokioClock::with_base(1_700_000_000_000)),
        ..SimConfig::default()
    });
    sim.add_order(order_with_refund(
        "pandapon-taobao",
        "1",
        "WAIT_SELLER_SEND_GOODS",
        "R",
        "WAIT_SELLER_AGREE",
    ));
    sim.schedule(rescind_sim::ScheduledEvent {
        after_ms: 3_600_000,
        channel: "pandapon-taobao".into(),
        order_id: "1".into(),
        action: rescind_sim::EventAction::CompleteRefund,
    });
    tokio::time::sleep(std::time::Duration::from_millis(3_599_000)).await;
    assert_eq!(
        sim.refund("pandapon-taobao", "R").unwrap().status,
        "WAIT_SELLER_AGREE"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2_000)).await;
    assert_eq!(
        sim.refund("pandapon-taobao", "R").unwrap().status,
        "SUCCESS"
    );
    assert_eq!(
        sim.order("pandapon-taobao", "1").unwrap().status,
        "TRADE_CLOSED"
    );
}

/// The binary prints `listening on http://HOST:PORT` first and serves there.
#[tokio::test]
async fn binary_prints_its_address_first() {
    use tokio::io::AsyncBufReadExt;
    let dir = std::env::temp_dir().join(format!("rescind-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = dir.join("fixture.json");
    std::fs::write(
        &fixture,
        r#"[{"channel":"tmall-tbc","order_id":"B1","status":"WAIT_BUYER_PAY"}]"#,
    )
    .unwrap();
    let faults = dir.join("faults.json");
    std::fs::write(
        &faults,
        r#"{"default":{"latency_min_ms":0,"latency_max_ms":1}}"#,
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rescind-sim"))
        .args(["--listen", "127.0.0.1:0", "--seed", "3", "--generate", "5"])
        .arg("--fixture")
        .arg(&fixture)
        .arg("--faults")
        .arg(&faults)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let base = first
        .strip_prefix("listening on ")
        .expect(&first)
        .to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{first}");
    let v: serde_json::Value = reqwest::get(format!("{base}/_admin/orders/tmall-tbc/B1"))
        .await
        .unwrap()
        .json_or_text()
        .await;
    assert_eq!(v["status"], "WAIT_BUYER_PAY", "{v}");
    let st: serde_json::Value = reqwest::get(format!("{base}/_admin/state"))
        .await
        .unwrap()
        .json_or_text()
        .await;
    assert_eq!(st["orders"].as_array().unwrap().len(), 6, "{st}");
    child.kill().await.unwrap();

    // A bad fixture is a clear error, exit code 2.
    std::fs::write(
        &fixture,
        r#"[{"channel":"tmall-tbc","order_id":"B1","status":"PAID??"}]"#,
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rescind-sim"))
        .arg("--fixture")
        .arg(&fixture)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown order status \"PAID??\""), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

trait JsonOrText {
    async fn json_or_text(self) -> serde_json::Value;
}

impl JsonOrText for reqwest::Response {
    async fn json_or_text(self) -> serde_json::Value {
        let b = self.bytes().await.unwrap();
        serde_json::from_slice(&b)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&b).into()))
    }
}
