//! The TOP gateway over real HTTP: signatures, timestamps, parameter
//! placement, every documented error path, business rules and faults.

mod common;

use common::*;
use rescind_core::TokioClock;
use rescind_sim::{defaults, FaultKind, FaultProfile, FaultSpec, LostResponseMode, SimConfig};
use rescind_wire::sign::{top_timestamp, SignMethod};
use serde_json::{json, Value};
use std::sync::Arc;

const CANCEL: &str = "tmall.tbc.order.cancel";
const PAID: &str = "tmall.tbc.order.paidcancel";
const GET: &str = "tmall.tbc.order.get";
const DAMAI: &str = "alibaba.damai.yuntoc.order.cancellockstock";

fn result(v: &Value, method: &str) -> Value {
    v[format!("{}_response", method.replace('.', "_"))]["result"].clone()
}

/// The CHANNELS.md vectors, sent verbatim (the sim's clock set to the
/// vector's timestamp), must be accepted; a flipped signature must not.
#[tokio::test]
async fn channels_md_signature_vectors_over_http() {
    let vector_ms = rescind_wire::sign::parse_top_timestamp("2025-11-04 01:00:40").unwrap();
    let h = Harness::start(SimConfig {
        clock: Arc::new(TokioClock::with_base(vector_ms)),
        ..SimConfig::default()
    })
    .await;
    let cases = [
        ("md5", "920403741304ECD364C147DC2251EB8B", "1231231"),
        ("hmac", "1C4BD47043064AA2607150EC660B7A41", "1231231"),
    ];
    for (sign_method, sign, order_id) in cases {
        h.sim
            .add_order(order("tmall-tbc", order_id, "WAIT_BUYER_PAY"));
        let body = format!(
            "app_key=12129701&format=json&method=tmall.tbc.order.cancel&partner_id=apidoc&sign={sign}\
             &sign_method={sign_method}&timestamp=2025-11-04+01%3A00%3A40&v=2.0&out_order_no={order_id}&source_site=LAZADA_SG"
        );
        let v = h.top_post(body).await;
        assert_eq!(result(&v, CANCEL)["success"], true, "{sign_method}: {v}");
        let bad = format!(
            "app_key=12129701&format=json&method=tmall.tbc.order.cancel&partner_id=apidoc&sign=0{}\
             &sign_method={sign_method}&timestamp=2025-11-04+01%3A00%3A40&v=2.0&out_order_no={order_id}&source_site=LAZADA_SG",
            &sign[1..]
        );
        let v = h.top_post(bad).await;
        assert_eq!(v["error_response"]["code"], 25, "{sign_method}: {v}");
    }
}

/// Every sign method round-trips through the client-side signer.
#[tokio::test]
async fn every_sign_method_is_verified() {
    let h = Harness::new().await;
    for (i, m) in [SignMethod::Md5, SignMethod::Hmac, SignMethod::HmacSha256]
        .into_iter()
        .enumerate()
    {
        let id = format!("S{i}");
        h.sim.add_order(order("tmall-tbc", &id, "WAIT_BUYER_PAY"));
        let p = top_params(
            CANCEL,
            &[("out_order_no", &id), ("source_site", "LAZADA_SG")],
            &h.ts_now(),
            m,
        );
        let v = h.top_post(form(&p)).await;
        assert_eq!(result(&v, CANCEL)["success"], true, "{m}: {v}");
    }
}

/// Both timestamp forms are accepted inside the window and refused outside it.
#[tokio::test]
async fn both_timestamp_forms_and_the_ten_minute_window() {
    let h = Harness::new().await;
    let now = h.now_ms();
    let cases: Vec<(String, Option<u32>)> = vec![
        (top_timestamp(now), None),
        (now.to_string(), None),
        (top_timestamp(now - 9 * 60_000), None),
        ((now + 9 * 60_000).to_string(), None),
        (top_timestamp(now - 11 * 60_000), Some(31)),
        ((now + 11 * 60_000).to_string(), Some(31)),
        ("2025/11/04 01:00:40".to_owned(), Some(31)),
    ];
    for (i, (ts, expected)) in cases.into_iter().enumerate() {
        let id = format!("TS{i}");
        h.sim.add_order(order("tmall-tbc", &id, "WAIT_BUYER_PAY"));
        let p = top_params(
            CANCEL,
            &[("out_order_no", &id), ("source_site", "X")],
            &ts,
            SignMethod::Md5,
        );
        let v = h.top_post(form(&p)).await;
        match expected {
            None => assert_eq!(result(&v, CANCEL)["success"], true, "{ts}: {v}"),
            Some(code) => assert_eq!(v["error_response"]["code"], code, "{ts}: {v}"),
        }
    }
}

/// Parameters in the body, split query/body, and all in the query (GET).
#[tokio::test]
async fn both_parameter_placements() {
    let h = Harness::new().await;
    for id in ["P1", "P2", "P3"] {
        h.sim.add_order(order("tmall-tbc", id, "WAIT_BUYER_PAY"));
    }
    // 1. Everything in the body.
    let p = top_params(
        CANCEL,
        &[("out_order_no", "P1"), ("source_site", "X")],
        &h.ts_now(),
        SignMethod::Md5,
    );
    assert_eq!(result(&h.top_post(form(&p)).await, CANCEL)["success"], true);

    // 2. System parameters in the query, API parameters in the body.
    let p = top_params(
        CANCEL,
        &[("out_order_no", "P2"), ("source_site", "X")],
        &h.ts_now(),
        SignMethod::Hmac,
    );
    let (api, sys): (Vec<_>, Vec<_>) = p
        .into_iter()
        .partition(|(k, _)| k == "out_order_no" || k == "source_site");
    let r = h
        .http
        .post(format!("{}?{}", h.url("/router/rest"), form(&sys)))
        .header(
            "content-type",
            "application/x-www-form-urlencoded;charset=utf-8",
        )
        .body(form(&api))
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(result(&v, CANCEL)["success"], true, "{v}");

    // 3. Everything in the query string of a GET.
    let p = top_params(
        CANCEL,
        &[("out_order_no", "P3"), ("source_site", "X")],
        &h.ts_now(),
        SignMethod::HmacSha256,
    );
    let r = h
        .http
        .get(format!("{}?{}", h.url("/router/rest"), form(&p)))
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(result(&v, CANCEL)["success"], true, "{v}");
    assert_eq!(h.sim.effects().len(), 3, "{}", h.context());
}

/// Every documented error path: (what, edit of the signed parameters, code, sub_code prefix).
#[tokio::test]
async fn documented_error_paths() {
    let h = Harness::new().await;
    h.sim.add_order(order("tmall-tbc", "E1", "WAIT_BUYER_PAY"));
    type Edit = fn(&mut Vec<(String, String)>);
    fn remove(p: &mut Vec<(String, String)>, k: &str) {
        p.retain(|(n, _)| n != k);
    }
    fn set(p: &mut Vec<(String, String)>, k: &str, v: &str) {
        remove(p, k);
        p.push((k.into(), v.into()));
    }
    let cases: Vec<(&str, Edit, bool, u32, &str)> = vec![
        ("missing method", |p| remove(p, "method"), true, 21, ""),
        (
            "invalid method",
            |p| set(p, "method", "taobao.no.such"),
            true,
            22,
            "",
        ),
        ("invalid format", |p| set(p, "format", "yaml"), true, 23, ""),
        ("missing signature", |p| remove(p, "sign"), false, 24, ""),
        (
            "invalid signature",
            |p| set(p, "sign", "00000000000000000000000000000000"),
            false,
            25,
            "",
        ),
        (
            "unknown sign method",
            |p| set(p, "sign_method", "sha1"),
            true,
            25,
            "isv.invalid-signature-method",
        ),
        ("missing app key", |p| remove(p, "app_key"), true, 28, ""),
        (
            "invalid app key",
            |p| set(p, "app_key", "999"),
            true,
            29,
            "",
        ),
        (
            "missing timestamp",
            |p| remove(p, "timestamp"),
            true,
            30,
            "",
        ),
        (
            "invalid timestamp",
            |p| set(p, "timestamp", "yesterday"),
            true,
            31,
            "isv.invalid-timestamp",
        ),
        ("missing version", |p| remove(p, "v"), true, 32, ""),
        ("unsupported version", |p| set(p, "v", "3.0"), true, 34, ""),
        (
            "missing argument",
            |p| remove(p, "out_order_no"),
            true,
            40,
            "isv.missing-parameter:out_order_no",
        ),
        (
            "missing source_site",
            |p| remove(p, "source_site"),
            true,
            40,
            "isv.missing-parameter:source_site",
        ),
        (
            "tampered argument",
            |p| set(p, "out_order_no", "E2"),
            false,
            25,
            "",
        ),
    ];
    for (what, edit, resign, code, sub) in cases {
        let mut p = top_params(
            CANCEL,
            &[("out_order_no", "E1"), ("source_site", "X")],
            &h.ts_now(),
            SignMethod::Md5,
        );
        edit(&mut p);
        if resign {
            sign_top(&mut p, SignMethod::Md5);
        }
        let r = h
            .http
            .post(h.url("/router/rest"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&p))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{what}");
        let text = r.text().await.unwrap();
        let v: Value = if text.starts_with('<') {
            // format=yaml falls back to the default xml.
            assert!(
                text.contains(&format!("<code>{code}</code>")),
                "{what}: {text}"
            );
            continue;
        } else {
            serde_json::from_str(&text).unwrap()
        };
        let e = &v["error_response"];
        assert_eq!(e["code"], code, "{what}: {v}");
        assert!(
            e["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
        assert!(
            e["sub_code"].as_str().unwrap_or("").starts_with(sub),
            "{what}: {v}"
        );
        assert!(e["request_id"].is_string(), "{what}: {v}");
    }
    assert!(
        h.sim.effects().is_empty(),
        "no error path applies anything: {}",
        h.context()
    );
}

/// Malformed input gets an error_response, never a panic or a bare 500.
#[tokio::test]
async fn malformed_input_gets_the_envelope() {
    let h = Harness::new().await;
    let bodies: Vec<(&str, Vec<u8>, u32)> = vec![
        ("bad percent escape", b"method=%zz&format=json".to_vec(), 47),
        ("invalid utf-8", b"method=%FF%FE&format=json".to_vec(), 47),
        (
            "huge body",
            {
                let mut b = b"format=json&x=".to_vec();
                b.extend(vec![b'a'; 2 << 20]);
                b
            },
            41,
        ),
        ("empty body", Vec::new(), 21),
    ];
    for (what, body, code) in bodies {
        let r = h
            .http
            .post(format!("{}?format=json", h.url("/router/rest")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{what}");
        let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(v["error_response"]["code"], code, "{what}: {v}");
    }
    // Damai's nested parameter must be JSON.
    let v = h
        .top(DAMAI, &[("param_cancel_stock_lock_request", "{not json")])
        .await;
    assert_eq!(v["error_response"]["code"], 41, "{v}");
    assert!(v["error_response"]["sub_code"]
        .as_str()
        .unwrap()
        .starts_with("isv.invalid-parameter"));
    // Still up.
    let (s, _) = h.admin_get("/_admin/state").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn xml_is_the_default_format() {
    let h = Harness::new().await;
    h.sim.add_order(order("tmall-tbc", "X1", "WAIT_BUYER_PAY"));
    let mut p = top_params(
        CANCEL,
        &[("out_order_no", "X1"), ("source_site", "X")],
        &h.ts_now(),
        SignMethod::Md5,
    );
    p.retain(|(k, _)| k != "format");
    sign_top(&mut p, SignMethod::Md5);
    let r = h
        .http
        .post(h.url("/router/rest"))
        .body(form(&p))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/xml"));
    let text = r.text().await.unwrap();
    assert!(text.starts_with("<?xml"), "{text}");
    assert!(
        text.contains("<tmall_tbc_order_cancel_response><request_id>")
            || text.contains("<tmall_tbc_order_cancel_response><result>"),
        "{text}"
    );
    assert!(text.contains("<success>true</success>"), "{text}");
    // An error in xml.
    p.retain(|(k, _)| k != "sign");
    p.push(("sign".into(), "BAD".into()));
    let text = h
        .http
        .post(h.url("/router/rest"))
        .body(form(&p))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("<error_response><code>25</code>"), "{text}");
}

/// TBC business rules, in the assumed error codes, with the effect log.
#[tokio::test]
async fn tbc_business_rules_and_effects() {
    let h = Harness::new().await;
    h.sim.add_order(order("tmall-tbc", "U", "WAIT_BUYER_PAY"));
    h.sim
        .add_order(order("tmall-tbc", "P", "WAIT_SELLER_SEND_GOODS"));
    h.sim
        .add_order(order("tmall-tbc", "S", "WAIT_BUYER_CONFIRM_GOODS"));
    let site = ("source_site", "LAZADA_SG");
    let cases: Vec<(&str, &str, &str)> = vec![
        (CANCEL, "U", ""),
        (CANCEL, "U", "ORDER_ALREADY_CANCELLED"),
        (CANCEL, "P", "ORDER_PAID"),
        (CANCEL, "S", "ORDER_SHIPPED"),
        (CANCEL, "nope", "ORDER_NOT_FOUND"),
        (PAID, "U", "ORDER_ALREADY_CANCELLED"),
        (PAID, "S", "ORDER_SHIPPED"),
        (PAID, "P", ""),
        (PAID, "P", "REFUND_ALREADY_OPEN"),
    ];
    for (method, id, expected) in cases {
        let v = h.top(method, &[("out_order_no", id), site]).await;
        let r = result(&v, method);
        if expected.is_empty() {
            assert_eq!(r["success"], true, "{method} {id}: {v}");
            assert_eq!(r["error_code"], "", "{method} {id}: {v}");
        } else {
            assert_eq!(r["success"], false, "{method} {id}: {v}");
            assert_eq!(r["error_code"], expected, "{method} {id}: {v}");
        }
    }
    assert_eq!(
        h.effect_count("cancel_unpaid", "tmall-tbc:U").await,
        1,
        "{}",
        h.context()
    );
    assert_eq!(
        h.effect_count("cancel_paid", "tmall-tbc:P").await,
        1,
        "{}",
        h.context()
    );
    assert_eq!(h.sim.effects().len(), 2);
    // The lookup shows the refund.
    let v = h.top(GET, &[("out_order_no", "P"), site]).await;
    let o = &result(&v, GET)["order"];
    assert_eq!(o["status"], "WAIT_SELLER_SEND_GOODS", "{v}");
    assert_eq!(o["refund_status"], "WAIT_SELLER_AGREE", "{v}");
    let rid = o["refund_id"].as_str().unwrap().to_owned();
    assert_eq!(
        h.sim.refund("tmall-tbc", &rid).unwrap().status,
        "WAIT_SELLER_AGREE"
    );
    let v = h.top(GET, &[("out_order_no", "U"), site]).await;
    assert_eq!(result(&v, GET)["order"]["status"], "TRADE_CLOSED_BY_TAOBAO");
    assert!(result(&v, GET)["order"].get("refund_id").is_none());
    let v = h.top(GET, &[("out_order_no", "zzz"), site]).await;
    assert_eq!(result(&v, GET)["error_code"], "ORDER_NOT_FOUND");
    // The effect log names the request.
    let e = &h.sim.effects()[0];
    assert_eq!(
        (e.op.as_str(), e.target.as_str(), e.count),
        ("cancel_unpaid", "tmall-tbc:U", 1)
    );
    assert_eq!(e.request.endpoint, CANCEL);
    assert_eq!(e.request.params["out_order_no"], "U");
    assert!(!e.request.params.contains_key("sign"));
}

fn damai_param(order_id: &str, secret: &str, signed_override: Option<&str>) -> String {
    use rescind_wire::sign::{DamaiHeadFields, DamaiHeadSigner, DamaiMd5HeadSigner, Secret};
    let ts = "1762189240000";
    let signed = DamaiMd5HeadSigner.sign(
        &DamaiHeadFields {
            msg_id: "m1",
            supplier_key: defaults::SUPPLIER_KEY,
            time_stamp: ts,
            version: "1.0",
        },
        &Secret::new(secret),
    );
    json!({
        "cancel_stock_lock_request_body": {"cancel_stock_lock_req_param": {"order_id": order_id}},
        "head": {"msg_id": "m1", "signed": signed_override.unwrap_or(&signed), "supplier_key": defaults::SUPPLIER_KEY,
                 "supplier_secret": secret, "time_stamp": ts, "version": "1.0"}
    })
    .to_string()
}

#[tokio::test]
async fn damai_cancel_lock_stock() {
    let h = Harness::new().await;
    h.sim.add_order(rescind_sim::OrderSeed {
        stock_lock: Some("D1".into()),
        ..order("damai", "D1", "WAIT_PAY")
    });
    let cases = [
        ("D1", defaults::SUPPLIER_SECRET, None, "0"),
        ("D1", defaults::SUPPLIER_SECRET, None, "1001"),
        ("D404", defaults::SUPPLIER_SECRET, None, "1002"),
        ("D1", "wrong-secret", None, "1003"),
        (
            "D1",
            defaults::SUPPLIER_SECRET,
            Some("BADSIGNATURE"),
            "1003",
        ),
    ];
    for (id, secret, signed, code) in cases {
        let v = h
            .top(
                DAMAI,
                &[(
                    "param_cancel_stock_lock_request",
                    &damai_param(id, secret, signed),
                )],
            )
            .await;
        let r = result(&v, DAMAI);
        assert_eq!(r["head"]["return_code"], code, "{id} {code}: {v}");
        assert_eq!(r["cancel_stock_lock_result_body"]["order_id"], id);
    }
    assert_eq!(h.effect_count("release_stock", "damai:D1").await, 1);
    let o = h.sim.order("damai", "D1").unwrap();
    assert_eq!(
        (o.status.as_str(), o.stock_lock_held),
        ("CANCELLED", Some(false))
    );
    // The secret never reaches the effect log.
    let log = serde_json::to_string(&h.sim.effects()).unwrap();
    assert!(!log.contains(defaults::SUPPLIER_SECRET), "{log}");
}

/// Each fault kind: 5xx, isp, rate limit (not applied), lost response (applied once).
#[tokio::test]
async fn faults_of_every_kind() {
    let h = Harness::new().await;
    let site = ("source_site", "X");
    for id in ["F1", "F2", "F3", "F4", "F5"] {
        h.sim.add_order(order("tmall-tbc", id, "WAIT_BUYER_PAY"));
    }

    h.sim.set_faults(FaultProfile::everywhere(FaultSpec::always(
        FaultKind::Http5xx,
    )));
    let p = top_params(
        CANCEL,
        &[("out_order_no", "F1"), site],
        &h.ts_now(),
        SignMethod::Md5,
    );
    let r = h
        .http
        .post(h.url("/router/rest"))
        .body(form(&p))
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 502 | 503), "{}", r.status());

    h.sim
        .set_faults(FaultProfile::none().with(CANCEL, FaultSpec::always(FaultKind::Isp)));
    let v = h.top(CANCEL, &[("out_order_no", "F1"), site]).await;
    assert!(
        v["error_response"]["sub_code"]
            .as_str()
            .unwrap()
            .starts_with("isp."),
        "{v}"
    );
    assert!(
        matches!(v["error_response"]["code"].as_u64(), Some(10 | 15)),
        "{v}"
    );

    h.sim.set_faults(FaultProfile::none().with(
        CANCEL,
        FaultSpec {
            rate_limit_ban_secs: 7,
            ..FaultSpec::always(FaultKind::RateLimit)
        },
    ));
    let v = h.top(CANCEL, &[("out_order_no", "F1"), site]).await;
    assert_eq!(v["error_response"]["code"], 7, "{v}");
    assert_eq!(
        v["error_response"]["sub_msg"], "This ban will last for 7 more seconds",
        "{v}"
    );
    assert!(
        h.sim.effects().is_empty(),
        "faults before the call apply nothing: {}",
        h.context()
    );

    // Lost response, dropped connection: the effect is applied, the client gets an error.
    h.sim.set_faults(FaultProfile::everywhere(FaultSpec::always(
        FaultKind::LostResponse,
    )));
    let p = top_params(
        CANCEL,
        &[("out_order_no", "F2"), site],
        &h.ts_now(),
        SignMethod::Md5,
    );
    let r = h
        .http
        .post(h.url("/router/rest"))
        .body(form(&p))
        .send()
        .await;
    let outcome = match r {
        Err(e) => Err(e),
        Ok(resp) => resp.bytes().await.map(|_| ()),
    };
    assert!(
        outcome.is_err(),
        "a dropped response must not read as a response"
    );
    assert_eq!(
        h.effect_count("cancel_unpaid", "tmall-tbc:F2").await,
        1,
        "{}",
        h.context()
    );

    // Lost response as a gateway 504.
    h.sim.set_faults(FaultProfile::everywhere(FaultSpec {
        lost_response_mode: LostResponseMode::GatewayTimeout,
        ..FaultSpec::always(FaultKind::LostResponse)
    }));
    let p = top_params(
        CANCEL,
        &[("out_order_no", "F3"), site],
        &h.ts_now(),
        SignMethod::Md5,
    );
    let r = h
        .http
        .post(h.url("/router/rest"))
        .body(form(&p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(h.effect_count("cancel_unpaid", "tmall-tbc:F3").await, 1);

    // The retry after a lost response finds the order cancelled: no second effect.
    h.sim.set_faults(FaultProfile::none());
    let v = h.top(CANCEL, &[("out_order_no", "F3"), site]).await;
    assert_eq!(result(&v, CANCEL)["error_code"], "ORDER_ALREADY_CANCELLED");
    assert_eq!(h.effect_count("cancel_unpaid", "tmall-tbc:F3").await, 1);

    // Scripted: the first request is lost, the next goes through.
    h.sim
        .set_faults(FaultProfile::none().with(CANCEL, FaultSpec::scripted([FaultKind::RateLimit])));
    let v = h.top(CANCEL, &[("out_order_no", "F4"), site]).await;
    assert_eq!(v["error_response"]["code"], 7);
    let v = h.top(CANCEL, &[("out_order_no", "F4"), site]).await;
    assert_eq!(result(&v, CANCEL)["success"], true, "{v}");

    // Latency.
    h.sim.set_faults(FaultProfile::everywhere(FaultSpec {
        latency_min_ms: 150,
        latency_max_ms: 200,
        ..FaultSpec::default()
    }));
    let t = std::time::Instant::now();
    let v = h.top(CANCEL, &[("out_order_no", "F5"), site]).await;
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(result(&v, CANCEL)["success"], true);
}

/// Faults from the admin API, as a profile file would give them.
#[tokio::test]
async fn faults_change_at_run_time_through_admin() {
    let h = Harness::new().await;
    h.sim.add_order(order("tmall-tbc", "A1", "WAIT_BUYER_PAY"));
    let (s, _) = h
        .admin_post(
            "/_admin/faults",
            &json!({"tmall.tbc.order.cancel": {"isp": 1.0}}),
        )
        .await;
    assert_eq!(s, 200);
    let v = h
        .top(CANCEL, &[("out_order_no", "A1"), ("source_site", "X")])
        .await;
    assert!(v["error_response"]["sub_code"]
        .as_str()
        .unwrap()
        .starts_with("isp."));
    let (_, f) = h.admin_get("/_admin/faults").await;
    assert_eq!(f["tmall.tbc.order.cancel"]["isp"], 1.0);
    let (s, v) = h
        .admin_post("/_admin/faults", &json!({"x": {"isp": "lots"}}))
        .await;
    assert_eq!(s, 400, "{v}");
    h.admin_post("/_admin/faults", &json!({})).await;
    let v = h
        .top(CANCEL, &[("out_order_no", "A1"), ("source_site", "X")])
        .await;
    assert_eq!(result(&v, CANCEL)["success"], true, "{v}");
}

/// The buyer pays while the cancel is in flight.
#[tokio::test]
async fn scheduled_payment_races_the_cancel() {
    let h = Harness::new().await;
    h.sim.add_order(order("tmall-tbc", "R1", "WAIT_BUYER_PAY"));
    let (s, _) = h
        .admin_post(
            "/_admin/schedule",
            &json!({"after_ms": 0, "channel": "tmall-tbc", "order_id": "R1", "action": "pay"}),
        )
        .await;
    assert_eq!(s, 200);
    let v = h
        .top(CANCEL, &[("out_order_no", "R1"), ("source_site", "X")])
        .await;
    assert_eq!(result(&v, CANCEL)["error_code"], "ORDER_PAID", "{v}");
    let v = h
        .top(PAID, &[("out_order_no", "R1"), ("source_site", "X")])
        .await;
    assert_eq!(result(&v, PAID)["success"], true, "{v}");
    let rid = result(&v, PAID)["refund_id"].as_str().unwrap().to_owned();
    h.sim.schedule(rescind_sim::ScheduledEvent {
        after_ms: 100,
        channel: "tmall-tbc".into(),
        order_id: "R1".into(),
        action: rescind_sim::EventAction::CompleteRefund,
    });
    assert_eq!(
        h.sim.refund("tmall-tbc", &rid).unwrap().status,
        "WAIT_SELLER_AGREE"
    );
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    assert_eq!(h.sim.refund("tmall-tbc", &rid).unwrap().status, "SUCCESS");
    assert_eq!(
        h.sim.order("tmall-tbc", "R1").unwrap().status,
        "TRADE_CLOSED"
    );
}

/// Permanent and authentication faults, set through the admin API: each is
/// answered in the TOP `error_response` envelope with the code the TOP
/// client classifies (41 invalid parameter, 25 invalid signature, 27 invalid
/// session), on the chosen endpoint only, and nothing is applied.
#[tokio::test]
async fn permanent_and_auth_faults_are_not_applied() {
    let h = Harness::new().await;
    h.sim.add_order(order("tmall-tbc", "P1", "WAIT_BUYER_PAY"));
    h.sim.add_order(rescind_sim::OrderSeed {
        stock_lock: Some("D9".into()),
        ..order("damai", "D9", "WAIT_PAY")
    });
    let damai_p = damai_param("D9", defaults::SUPPLIER_SECRET, None);
    let damai_api = [("param_cancel_stock_lock_request", damai_p.as_str())];
    for (kind, code, sub) in [
        ("permanent", 41, Some("isv.invalid-parameter")),
        ("auth", 25, None),
        ("invalid_session", 27, Some("isv.invalid-session")),
    ] {
        let (s, _) = h
            .admin_post("/_admin/faults", &json!({ DAMAI: { kind: 1.0 } }))
            .await;
        assert_eq!(s, 200);
        let v = h.top(DAMAI, &damai_api).await;
        let e = &v["error_response"];
        assert_eq!(e["code"], code, "{kind}: {v}");
        assert_eq!(e["sub_code"].as_str(), sub, "{kind}: {v}");
        // Only the chosen endpoint.
        let v = h
            .top(GET, &[("out_order_no", "P1"), ("source_site", "X")])
            .await;
        assert_eq!(result(&v, GET)["success"], true, "{v}");
    }
    // A script works too, and is consumed.
    h.sim.set_faults(FaultProfile::none().with(
        CANCEL,
        FaultSpec::scripted([FaultKind::Auth, FaultKind::Permanent]),
    ));
    for code in [25, 41] {
        let v = h
            .top(CANCEL, &[("out_order_no", "P1"), ("source_site", "X")])
            .await;
        assert_eq!(v["error_response"]["code"], code, "{v}");
    }
    assert!(h.sim.effects().is_empty(), "{}", h.context());
    assert_eq!(
        h.sim.order("damai", "D9").unwrap().stock_lock_held,
        Some(true)
    );
    // The fault stops: the same calls apply, once.
    h.admin_post("/_admin/faults", &json!({})).await;
    let v = h.top(DAMAI, &damai_api).await;
    assert_eq!(result(&v, DAMAI)["head"]["return_code"], "0", "{v}");
    let v = h
        .top(CANCEL, &[("out_order_no", "P1"), ("source_site", "X")])
        .await;
    assert_eq!(result(&v, CANCEL)["success"], true, "{v}");
    assert_eq!(h.effect_count("release_stock", "damai:D9").await, 1);
    assert_eq!(h.effect_count("cancel_unpaid", "tmall-tbc:P1").await, 1);
}

/// Flow control per app key over HTTP: the budget, the code-7 answer and its
/// ban, the per-second log, an admin ban, and refused settings.
#[tokio::test]
async fn flow_control_per_app_key() {
    let h = Harness::new().await;
    let site = ("source_site", "LAZADA_SG");
    // Off by default: everything passes, and is logged.
    let v = h.top(GET, &[("out_order_no", "none"), site]).await;
    assert_ne!(v["error_response"]["code"], 7, "{v}");
    let (status, v) = h
        .admin_post(
            "/_admin/flow",
            &json!({"rate_per_s": 1.0, "burst": 2, "ban_secs": 3}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    for i in 0..2 {
        let v = h.top(GET, &[("out_order_no", "none"), site]).await;
        assert_ne!(v["error_response"]["code"], 7, "call {i}: {v}");
    }
    let v = h.top(CANCEL, &[("out_order_no", "X1"), site]).await;
    assert_eq!(v["error_response"]["code"], 7, "{v}");
    assert_eq!(v["error_response"]["msg"], "App Call Limited", "{v}");
    assert_eq!(
        v["error_response"]["sub_code"], "accesscontrol.limited-by-app-access-count",
        "{v}"
    );
    assert_eq!(
        v["error_response"]["sub_msg"], "This ban will last for 3 more seconds",
        "{v}"
    );
    // During the ban every call on the app key is refused, and applies nothing.
    let v = h.top(CANCEL, &[("out_order_no", "X1"), site]).await;
    assert_eq!(v["error_response"]["code"], 7, "{v}");
    assert!(h.sim.effects().is_empty(), "{}", h.context());

    let (_, v) = h.admin_get("/_admin/flow").await;
    let key = &v["app_keys"][defaults::APP_KEY];
    assert_eq!(key["bans"], 1, "{v}");
    assert!(key["banned_for_ms"].as_u64().unwrap() > 0, "{v}");
    let (acc, refused) = key["seconds"]
        .as_array()
        .unwrap()
        .iter()
        .fold((0, 0), |(a, r), s| {
            (
                a + s["accepted"].as_u64().unwrap(),
                r + s["refused"].as_u64().unwrap(),
            )
        });
    assert_eq!((acc, refused), (3, 2), "{v}");
    assert_eq!(v["config"]["rate_per_s"], 1.0, "{v}");

    // An admin ban on another app key; bad settings are refused by name.
    let (status, _) = h
        .admin_post("/_admin/flow/ban", &json!({"app_key": "other", "secs": 5}))
        .await;
    assert_eq!(status, 200);
    let (_, v) = h.admin_get("/_admin/flow").await;
    assert_eq!(v["app_keys"]["other"]["bans"], 1, "{v}");
    let (status, v) = h
        .admin_post("/_admin/flow", &json!({"rate_per_s": -2.0}))
        .await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("rate_per_s"), "{v}");
    let (status, v) = h.admin_post("/_admin/flow", &json!({"rate": 2.0})).await;
    assert_eq!(status, 400, "{v}");
}
