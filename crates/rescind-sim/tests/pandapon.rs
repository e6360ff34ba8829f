//! The PandaPon endpoints over real HTTP: header authentication, envelope
//! codes, large ids, faults, callbacks.

mod common;

use common::*;
use rescind_sim::{CallbackConfig, FaultKind, FaultProfile, FaultSpec, SimConfig};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

const BIG_1688: &str = "2542285634920880794"; // > 2^53

/// Missing, wrong and stale headers: (what, header edits, code).
#[tokio::test]
async fn header_authentication_errors() {
    let h = Harness::new().await;
    h.sim
        .add_order(order("pandapon-taobao", "9001", "WAIT_BUYER_PAY"));
    let now = h.now_ms();
    type Edit = Box<dyn Fn(&mut Vec<(String, String)>)>;
    fn drop_h(name: &'static str) -> Edit {
        Box::new(move |hs: &mut Vec<(String, String)>| hs.retain(|(k, _)| k != name))
    }
    fn set_h(name: &'static str, v: &'static str) -> Edit {
        Box::new(move |hs: &mut Vec<(String, String)>| {
            hs.retain(|(k, _)| k != name);
            hs.push((name.into(), v.into()));
        })
    }
    let cases: Vec<(&str, u64, Option<&str>, Edit, u32)> = vec![
        ("missing access-key", now, None, drop_h("access-key"), 401),
        ("missing timestamp", now, None, drop_h("timestamp"), 401),
        ("missing user-id", now, None, drop_h("user-id"), 401),
        ("missing signature", now, None, drop_h("signature"), 401),
        (
            "unknown access-key",
            now,
            None,
            set_h("access-key", "nope"),
            401,
        ),
        ("wrong user-id", now, None, set_h("user-id", "1"), 401),
        (
            "bad signature",
            now,
            None,
            set_h("signature", "B7F83FE2ADC8D8F044F2E01F0FFE8C80"),
            401,
        ),
        (
            "nonce not signed",
            now,
            None,
            set_h("nonce-str", "abc"),
            401,
        ),
        (
            "timestamp not a number",
            now,
            None,
            set_h("timestamp", "yesterday"),
            400,
        ),
        (
            "timestamp too old",
            now - 601_000,
            None,
            Box::new(|_| {}),
            403,
        ),
        (
            "timestamp too new",
            now + 601_000,
            None,
            Box::new(|_| {}),
            403,
        ),
        (
            "within the window",
            now - 590_000,
            None,
            Box::new(|_| {}),
            404,
        ),
        (
            "with nonce",
            now,
            Some("0123456789abcdef0123456789abcdef"),
            Box::new(|_| {}),
            404,
        ),
    ];
    for (what, ts, nonce, edit, code) in cases {
        let mut hs = pp_headers_at(ts, nonce);
        edit(&mut hs);
        let mut rb = h.http.get(h.url("/v2/taobao/order/detail/404"));
        for (k, v) in hs {
            rb = rb.header(k, v);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 200, "{what}");
        let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(v["code"], code, "{what}: {v}");
        for k in ["requestId", "developId", "msg"] {
            assert!(v[k].is_string(), "{what}: {k} in {v}");
        }
    }
}

#[tokio::test]
async fn taobao_refund_withdraw_rules() {
    let h = Harness::new().await;
    let ch = "pandapon-taobao";
    h.sim.add_order(order_with_refund(
        ch,
        "1",
        "WAIT_SELLER_SEND_GOODS",
        "RF1",
        "WAIT_SELLER_AGREE",
    ));
    h.sim
        .add_order(order_with_refund(ch, "2", "TRADE_CLOSED", "RF2", "SUCCESS"));
    h.sim.add_order(order_with_refund(
        ch,
        "3",
        "WAIT_SELLER_SEND_GOODS",
        "RF3",
        "SELLER_REFUSE_BUYER",
    ));
    let v = h.pp_get("/v2/taobao/order/refund/cancel/RF1").await;
    assert_eq!(v["code"], 200, "{v}");
    assert_eq!(v["data"]["cancelSuccess"], true, "{v}");
    assert_eq!(
        v["data"]["refundOrderAggregate"]["refundOrder"]["refundId"],
        "RF1"
    );
    assert_eq!(
        v["data"]["refundOrderAggregate"]["refundOrder"]["refundStatus"],
        "CLOSED"
    );
    assert_eq!(v["developId"], rescind_sim::defaults::PANDAPON_DEVELOP_ID);
    for (id, code) in [("RF1", 1101), ("RF2", 1102), ("RF3", 1103), ("RF404", 404)] {
        let v = h
            .pp_get(&format!("/v2/taobao/order/refund/cancel/{id}"))
            .await;
        assert_eq!(v["code"], code, "{id}: {v}");
        assert!(v["data"].is_null());
    }
    assert_eq!(
        h.effect_count("withdraw_refund", "pandapon-taobao:RF1")
            .await,
        1,
        "{}",
        h.context()
    );
    assert_eq!(h.sim.effects().len(), 1);
    let v = h.pp_get("/v2/taobao/order/refund/detail/RF1").await;
    assert_eq!(v["data"]["refundOrder"]["refundStatus"], "CLOSED", "{v}");
    assert_eq!(v["data"]["refundOrder"]["payOrderId"], "1", "{v}");
}

#[tokio::test]
async fn taobao_cancel_and_refund_submit() {
    let h = Harness::new().await;
    let ch = "pandapon-taobao";
    h.sim.add_order(order(ch, "10", "WAIT_BUYER_PAY"));
    h.sim.add_order(order(ch, "11", "WAIT_SELLER_SEND_GOODS"));
    h.sim.add_order(order(ch, "12", "WAIT_BUYER_CONFIRM_GOODS"));
    let cancel = |id: &str| json!({"orderId": id, "cancelReason": "不想要了"}).to_string();
    let cases: Vec<(&str, String, u32)> = vec![
        ("/v2/taobao/order/cancel", cancel("10"), 200),
        ("/v2/taobao/order/cancel", cancel("10"), 1001),
        ("/v2/taobao/order/cancel", cancel("11"), 1002),
        ("/v2/taobao/order/cancel", cancel("12"), 1003),
        ("/v2/taobao/order/cancel", cancel("404"), 404),
        (
            "/v2/taobao/order/refund/submit",
            json!({"orderId": "11"}).to_string(),
            200,
        ),
        (
            "/v2/taobao/order/refund/submit",
            json!({"orderId": "11"}).to_string(),
            1104,
        ),
        (
            "/v2/taobao/order/refund/submit",
            json!({"orderId": "12"}).to_string(),
            1003,
        ),
        (
            "/v2/taobao/order/refund/submit",
            json!({"orderId": "10"}).to_string(),
            1001,
        ),
        ("/v2/taobao/order/refund/submit", json!({}).to_string(), 400),
    ];
    for (path, body, code) in cases {
        let v = h.pp_post(path, &body).await;
        assert_eq!(v["code"], code, "{path} {body}: {v}");
    }
    let v = h.pp_get("/v2/taobao/order/detail/11").await;
    assert_eq!(v["data"]["status"], "WAIT_SELLER_SEND_GOODS", "{v}");
    assert_eq!(v["data"]["refundStatus"], "WAIT_SELLER_AGREE", "{v}");
    assert_eq!(v["data"]["orderId"], "11");
    let v = h.pp_get("/v2/taobao/order/detail/10").await;
    assert_eq!(v["data"]["status"], "TRADE_CLOSED_BY_TAOBAO", "{v}");
    assert_eq!(
        h.effect_count("cancel_unpaid", "pandapon-taobao:10").await,
        1
    );
    assert_eq!(h.effect_count("cancel_paid", "pandapon-taobao:11").await, 1);
}

/// 1688 ids beyond 2^53 stay exact in both directions.
#[tokio::test]
async fn alibaba_cancel_keeps_large_ids_exact() {
    let h = Harness::new().await;
    let ch = "pandapon-1688";
    h.sim.add_order(order(ch, BIG_1688, "waitbuyerpay"));
    h.sim
        .add_order(order(ch, "2542285634920880795", "waitsellersend"));
    // A neighbour that f64 would confuse with BIG_1688.
    h.sim
        .add_order(order(ch, "2542285634920880793", "waitbuyerpay"));
    let body = format!(r#"{{"webSite":"1688","orderId":{BIG_1688},"cancelReason":"不想要了"}}"#);
    let v = h.pp_post("/v2/alibaba/order/cancel", &body).await;
    assert_eq!(
        (v["code"].as_u64(), v["data"].as_bool()),
        (Some(200), Some(true)),
        "{v}"
    );
    assert_eq!(h.sim.order(ch, BIG_1688).unwrap().status, "cancel");
    assert_eq!(
        h.sim.order(ch, "2542285634920880793").unwrap().status,
        "waitbuyerpay"
    );
    let cases: Vec<(String, u32)> = vec![
        (body.clone(), 1001),
        (
            r#"{"webSite":"1688","orderId":2542285634920880795}"#.into(),
            1002,
        ),
        (
            r#"{"webSite":"1688","orderId":"2542285634920880793"}"#.into(),
            200,
        ),
        (r#"{"webSite":"alibaba","orderId":1}"#.into(), 400),
        (r#"{"webSite":"1688","orderId":-1}"#.into(), 400),
        (r#"{"webSite":"1688","orderId":1.5}"#.into(), 400),
        (
            r#"{"webSite":"1688","orderId":99999999999999999999999}"#.into(),
            400,
        ),
        (r#"{"webSite":"1688","orderId":"abc"}"#.into(), 400),
        (r#"{"webSite":"1688"}"#.into(), 400),
        (r#"{"webSite":"1688","orderId":1}"#.into(), 404),
    ];
    for (body, code) in cases {
        let v = h.pp_post("/v2/alibaba/order/cancel", &body).await;
        assert_eq!(v["code"], code, "{body}: {v}");
    }
    // The detail answers the id as an exact JSON integer.
    let (s, text) = {
        let mut rb = h
            .http
            .get(h.url(&format!("/v2/alibaba/order/detail/{BIG_1688}")));
        for (k, v) in h.pp_headers(None) {
            rb = rb.header(k, v);
        }
        let r = rb.send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    };
    assert_eq!(s, 200);
    assert!(text.contains(&format!(r#""orderId":{BIG_1688}"#)), "{text}");
    assert!(text.contains(r#""status":"cancel""#), "{text}");
    assert_eq!(
        h.effect_count("cancel_unpaid", &format!("pandapon-1688:{BIG_1688}"))
            .await,
        1
    );
}

#[tokio::test]
async fn alibaba_refund_detail() {
    let h = Harness::new().await;
    h.sim.add_order(order_with_refund(
        "pandapon-1688",
        BIG_1688,
        "waitsellersend",
        "A1",
        "waitselleragree",
    ));
    let text = {
        let mut rb = h.http.get(h.url("/v2/alibaba/refund/detail/A1"));
        for (k, v) in h.pp_headers(None) {
            rb = rb.header(k, v);
        }
        rb.send().await.unwrap().text().await.unwrap()
    };
    assert!(text.contains(&format!(r#""orderId":{BIG_1688}"#)), "{text}");
    assert!(text.contains(r#""status":"waitselleragree""#), "{text}");
    let v = h.pp_get("/v2/alibaba/refund/detail/none").await;
    assert_eq!(v["code"], 404);
}

/// Bad JSON, wrong shapes, huge bodies, unknown paths, wrong verbs: the
/// envelope every time, and the server stays up.
#[tokio::test]
async fn malformed_input_gets_the_envelope() {
    let h = Harness::new().await;
    let huge = format!(
        r#"{{"webSite":"1688","orderId":1,"remark":"{}"}}"#,
        "x".repeat(2 << 20)
    );
    let cases: Vec<(&str, String, u32)> = vec![
        ("bad json", "{not json".into(), 400),
        ("not an object", "[1,2]".into(), 400),
        ("empty", String::new(), 400),
        // Lossy replacement makes it valid JSON without webSite: a 400.
        (
            "replacement chars",
            String::from_utf8_lossy(b"{\"a\":\"\xff\"}").into_owned(),
            400,
        ),
        ("huge", huge, 400),
    ];
    for (what, body, code) in cases {
        let (s, text) = h.pp_post_raw("/v2/alibaba/order/cancel", body).await;
        assert_eq!(s, 200, "{what}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["code"], code, "{what}: {v}");
    }
    // Raw invalid UTF-8 bytes in the JSON body.
    let mut rb = h.http.post(h.url("/v2/alibaba/order/cancel"));
    for (k, v) in h.pp_headers(None) {
        rb = rb.header(k, v);
    }
    let v: Value = serde_json::from_slice(
        &rb.body(b"{\"webSite\":\"\xff\xfe\"}".to_vec())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v["code"], 400, "{v}");
    // Unknown path and wrong verb.
    let v = h.pp_get("/v2/no/such/api").await;
    assert_eq!(v["code"], 404, "{v}");
    let v = h.pp_get("/v2/alibaba/order/cancel").await;
    assert_eq!(v["code"], 400, "{v}");
    // A header value that is not visible ASCII.
    let r = h
        .http
        .get(h.url("/v2/taobao/order/detail/1"))
        .header(
            "access-key",
            reqwest::header::HeaderValue::from_bytes(b"\xe4\xbd\xa0").unwrap(),
        )
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["code"], 400, "{v}");
    let (s, _) = h.admin_get("/_admin/state").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn faults_of_every_kind() {
    let h = Harness::new().await;
    let ch = "pandapon-taobao";
    for id in ["F1", "F2", "F3"] {
        h.sim.add_order(order(ch, id, "WAIT_BUYER_PAY"));
    }
    let ep = "pandapon.taobao.order.cancel";
    let body = |id: &str| json!({"orderId": id}).to_string();

    h.sim
        .set_faults(FaultProfile::none().with(ep, FaultSpec::always(FaultKind::Http5xx)));
    let (s, _) = h.pp_post_raw("/v2/taobao/order/cancel", body("F1")).await;
    assert!(matches!(s, 502 | 503), "{s}");

    h.sim
        .set_faults(FaultProfile::none().with(ep, FaultSpec::always(FaultKind::Isp)));
    assert_eq!(
        h.pp_post("/v2/taobao/order/cancel", &body("F1")).await["code"],
        500
    );

    h.sim.set_faults(FaultProfile::none().with(
        ep,
        FaultSpec {
            rate_limit_ban_secs: 3,
            ..FaultSpec::always(FaultKind::RateLimit)
        },
    ));
    let v = h.pp_post("/v2/taobao/order/cancel", &body("F1")).await;
    assert_eq!(v["code"], 429);
    assert_eq!(v["msg"], "rate limited, retry after 3 seconds");
    // Other endpoints are unaffected.
    assert_eq!(h.pp_get("/v2/taobao/order/detail/F1").await["code"], 200);
    assert!(h.sim.effects().is_empty(), "{}", h.context());

    h.sim
        .set_faults(FaultProfile::none().with(ep, FaultSpec::always(FaultKind::LostResponse)));
    let mut rb = h.http.post(h.url("/v2/taobao/order/cancel"));
    for (k, v) in h.pp_headers(None) {
        rb = rb.header(k, v);
    }
    let outcome = match rb.body(body("F2")).send().await {
        Err(e) => Err(e),
        Ok(r) => r.bytes().await.map(|_| ()),
    };
    assert!(outcome.is_err());
    assert_eq!(
        h.effect_count("cancel_unpaid", "pandapon-taobao:F2").await,
        1
    );
    h.sim.set_faults(FaultProfile::none());
    assert_eq!(
        h.pp_post("/v2/taobao/order/cancel", &body("F2")).await["code"],
        1001
    );
    assert_eq!(
        h.effect_count("cancel_unpaid", "pandapon-taobao:F2").await,
        1
    );
}

type Received = Arc<Mutex<Vec<Value>>>;

/// A callback receiver on loopback: fails the first `fail_first` pushes with 500.
async fn receiver(fail_first: usize) -> (String, Received) {
    use axum::routing::post;
    let got: Received = Arc::default();
    let seen = Arc::new(Mutex::new(0usize));
    let g = got.clone();
    let app = axum::Router::new().route(
        "/cb",
        post(move |body: axum::body::Bytes| {
            let (g, seen) = (g.clone(), seen.clone());
            async move {
                let n = {
                    let mut s = seen.lock().unwrap();
                    *s += 1;
                    *s
                };
                if n <= fail_first {
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                g.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                axum::http::StatusCode::OK
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (format!("http://{addr}/cb"), got)
}

async fn wait_for(got: &Received, n: usize) {
    for _ in 0..100 {
        if got.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn callbacks_are_pushed_and_re_pushed() {
    let (url, got) = receiver(1).await;
    let h = Harness::start(SimConfig {
        callback_url: Some(url),
        callbacks: CallbackConfig {
            retry_delay_ms: 50,
            ..CallbackConfig::default()
        },
        ..SimConfig::default()
    })
    .await;
    h.sim
        .add_order(order("pandapon-1688", BIG_1688, "waitbuyerpay"));
    let body = format!(r#"{{"webSite":"1688","orderId":{BIG_1688}}}"#);
    assert_eq!(
        h.pp_post("/v2/alibaba/order/cancel", &body).await["code"],
        200
    );
    wait_for(&got, 1).await;
    let msgs = got.lock().unwrap().clone();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let m = &msgs[0];
    assert_eq!(m["messageType"], "ORDER_STATUS_CHANGE");
    assert_eq!(m["messagePlatform"], 1);
    assert!(m["timestamp"].is_u64());
    let inner = m["messageBody"]
        .as_str()
        .expect("messageBody is a JSON string");
    assert!(
        inner.contains(&format!(r#""orderId":{BIG_1688}"#)),
        "{inner}"
    );
    assert!(inner.contains(r#""status":"cancel""#), "{inner}");
    // The first attempt got a 500 and was re-pushed.
    let pushes = h.sim.pushes();
    assert_eq!(pushes.len(), 2, "{pushes:?}");
    assert_eq!((pushes[0].status, pushes[0].delivered), (Some(500), false));
    assert_eq!((pushes[1].attempt, pushes[1].delivered), (2, true));
    let (_, v) = h.admin_get("/_admin/pushes").await;
    assert_eq!(v["pushes"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn callbacks_can_duplicate_and_cover_refund_changes() {
    let (url, got) = receiver(0).await;
    let h = Harness::start(SimConfig {
        callback_url: Some(url),
        callbacks: CallbackConfig {
            duplicate_probability: 1.0,
            reorder_window_ms: 30,
            ..CallbackConfig::default()
        },
        ..SimConfig::default()
    })
    .await;
    h.sim.add_order(order_with_refund(
        "pandapon-taobao",
        "77",
        "WAIT_SELLER_SEND_GOODS",
        "RX",
        "WAIT_SELLER_AGREE",
    ));
    assert_eq!(
        h.pp_get("/v2/taobao/order/refund/cancel/RX").await["code"],
        200
    );
    wait_for(&got, 2).await;
    let msgs = got.lock().unwrap().clone();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(msgs[0], msgs[1], "a duplicate is the same message");
    assert_eq!(msgs[0]["messageType"], "REFUND_STATUS_CHANGE");
    assert_eq!(msgs[0]["messagePlatform"], 0);
    let body: Value = serde_json::from_str(msgs[0]["messageBody"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"orderId": "77", "refundId": "RX", "refundStatus": "CLOSED"})
    );
}

/// A receiver that never answers in time is re-pushed up to the limit.
#[tokio::test]
async fn slow_receivers_are_re_pushed_up_to_the_limit() {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/cb",
        post(|| async {
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
            "late"
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cb", l.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    let h = Harness::start(SimConfig {
        callback_url: Some(url),
        callbacks: CallbackConfig {
            timeout_ms: 100,
            retry_delay_ms: 10,
            attempts_max: 3,
            ..CallbackConfig::default()
        },
        ..SimConfig::default()
    })
    .await;
    h.sim
        .add_order(order("pandapon-taobao", "5", "WAIT_BUYER_PAY"));
    assert_eq!(
        h.pp_post("/v2/taobao/order/cancel", r#"{"orderId":"5"}"#)
            .await["code"],
        200
    );
    for _ in 0..100 {
        if h.sim.pushes().len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let p = h.sim.pushes();
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(p.iter().all(|x| !x.delivered && x.error.is_some()), "{p:?}");
}

/// Permanent and authentication faults on the refund cancel, set on the
/// in-process handle: codes 400 and 401 in the PandaPon envelope, only on
/// that endpoint, never applied; once the fault stops the withdraw applies.
#[tokio::test]
async fn permanent_and_auth_faults_are_not_applied() {
    let h = Harness::new().await;
    let ch = "pandapon-taobao";
    h.sim.add_order(order_with_refund(
        ch,
        "7",
        "WAIT_SELLER_SEND_GOODS",
        "RF7",
        "WAIT_SELLER_AGREE",
    ));
    let ep = "pandapon.taobao.refund.cancel";
    for (kind, code) in [
        (FaultKind::Permanent, 400),
        (FaultKind::Auth, 401),
        (FaultKind::InvalidSession, 401),
    ] {
        h.sim
            .set_faults(FaultProfile::none().with(ep, FaultSpec::always(kind)));
        let v = h.pp_get("/v2/taobao/order/refund/cancel/RF7").await;
        assert_eq!(v["code"], code, "{kind:?}: {v}");
        assert!(v["data"].is_null(), "{v}");
        assert_eq!(h.pp_get("/v2/taobao/order/detail/7").await["code"], 200);
    }
    let (s, _) = h
        .admin_post("/_admin/faults", &json!({ ep: {"script": ["auth"]} }))
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        h.pp_get("/v2/taobao/order/refund/cancel/RF7").await["code"],
        401
    );
    assert!(h.sim.effects().is_empty(), "{}", h.context());
    assert_eq!(h.sim.refund(ch, "RF7").unwrap().status, "WAIT_SELLER_AGREE");
    // The script is used up: the next call applies.
    assert_eq!(
        h.pp_get("/v2/taobao/order/refund/cancel/RF7").await["code"],
        200
    );
    assert_eq!(
        h.effect_count("withdraw_refund", "pandapon-taobao:RF7")
            .await,
        1
    );
}
