//! Accounts and TOP sessions over real HTTP: session checks, order owners,
//! expiry, revocation, `taobao.top.auth.token.refresh` and the admin API.

mod common;

use common::*;
use serde_json::{json, Value};

const CANCEL: &str = "tmall.tbc.order.cancel";
const GET: &str = "tmall.tbc.order.get";
const REFRESH: &str = "taobao.top.auth.token.refresh";

fn result(v: &Value, method: &str) -> Value {
    v[format!("{}_response", method.replace('.', "_"))]["result"].clone()
}

async fn cancel(h: &Harness, order_id: &str, session: Option<&str>) -> Value {
    let mut api = vec![("out_order_no", order_id), ("source_site", "LAZADA_SG")];
    if let Some(s) = session {
        api.push(("session", s));
    }
    h.top(CANCEL, &api).await
}

async fn account(h: &Harness, id: &str) -> Value {
    let (st, v) = h.admin_get("/_admin/accounts").await;
    assert_eq!(st, 200, "{v}");
    v["accounts"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["id"] == id).cloned())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn without_accounts_sessions_are_not_checked() {
    let h = Harness::new().await;
    h.sim.add_order(order("tmall-tbc", "T1", "WAIT_BUYER_PAY"));
    let v = cancel(&h, "T1", Some("anything")).await;
    assert_eq!(result(&v, CANCEL)["success"], true, "{v}");
}

#[tokio::test]
async fn sessions_owners_expiry_revocation_and_counters() {
    let h = Harness::new().await;
    let far = h.now_ms() + 3_600_000;
    let (st, v) = h
        .admin_post(
            "/_admin/accounts",
            &json!([
                {"id": "shopA", "session": "sess-a", "expires_at_ms": far},
                {"id": "shopB", "session": "sess-b", "expires_at_ms": far}
            ]),
        )
        .await;
    assert_eq!((st, &v["added"]), (200, &json!(2)), "{v}");
    let (st, v) = h
        .admin_post(
            "/_admin/orders",
            &json!([
                {"channel": "tmall-tbc", "order_id": "A1", "status": "WAIT_BUYER_PAY", "account": "shopA"},
                {"channel": "tmall-tbc", "order_id": "A2", "status": "WAIT_BUYER_PAY", "account": "shopA"},
                {"channel": "tmall-tbc", "order_id": "B1", "status": "WAIT_BUYER_PAY", "account": "shopB"}
            ]),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        h.sim.order_account("tmall-tbc", "A1").as_deref(),
        Some("shopA")
    );

    // Unknown session.
    let v = cancel(&h, "A1", Some("nope")).await;
    assert_eq!(v["error_response"]["code"], 27, "{v}");
    assert_eq!(v["error_response"]["sub_code"], "invalid-sessionkey", "{v}");
    // A's session on B's order: a permission error, nothing applied.
    let v = cancel(&h, "B1", Some("sess-a")).await;
    assert_eq!(v["error_response"]["code"], 11, "{v}");
    assert_eq!(
        v["error_response"]["sub_code"], "isv.permission-denied",
        "{v}"
    );
    assert_eq!(h.effect_count("cancel_unpaid", "tmall-tbc:B1").await, 0);
    // A's session on A's order works.
    let v = cancel(&h, "A1", Some("sess-a")).await;
    assert_eq!(result(&v, CANCEL)["success"], true, "{v}");

    // Expired.
    let (st, _) = h
        .admin_post("/_admin/accounts/shopA/expire", &json!({}))
        .await;
    assert_eq!(st, 200);
    let v = cancel(&h, "A2", Some("sess-a")).await;
    assert_eq!(v["error_response"]["code"], 27, "{v}");
    assert!(
        v["error_response"]["sub_msg"]
            .as_str()
            .unwrap_or("")
            .contains("expired"),
        "{v}"
    );
    assert_eq!(h.effect_count("cancel_unpaid", "tmall-tbc:A2").await, 0);
    // B unaffected; then revoked.
    let v = h
        .top(
            GET,
            &[
                ("out_order_no", "B1"),
                ("source_site", "LAZADA_SG"),
                ("session", "sess-b"),
            ],
        )
        .await;
    assert_eq!(result(&v, GET)["success"], true, "{v}");
    let (st, _) = h
        .admin_post("/_admin/accounts/shopB/revoke", &json!({}))
        .await;
    assert_eq!(st, 200);
    let v = cancel(&h, "B1", Some("sess-b")).await;
    assert_eq!(v["error_response"]["code"], 27, "{v}");
    let (st, _) = h
        .admin_post("/_admin/accounts/nobody/expire", &json!({}))
        .await;
    assert_eq!(st, 404);

    // Counters: A's valid session carried 2 calls (one refused for B's
    // order); 2 refusals (B's order, expired).
    let a = account(&h, "shopA").await;
    assert_eq!(a["calls"], 2, "{a}");
    assert_eq!(a["refused"], 2, "{a}");
    assert_eq!(a["sessions"][0]["calls"], 2, "{a}");
    assert_eq!(a["sessions"][0]["valid"], false, "{a}");
    let b = account(&h, "shopB").await;
    assert_eq!(
        (&b["calls"], &b["revoked"]),
        (&json!(1), &json!(true)),
        "{b}"
    );
    // Session keys are never shown.
    let (_, all) = h.admin_get("/_admin/accounts").await;
    assert!(!all.to_string().contains("sess-a"), "{all}");
}

#[tokio::test]
async fn refresh_issues_a_new_session_and_spends_the_token() {
    let h = Harness::new().await;
    let soon = h.now_ms() + 60_000;
    let (st, v) = h
        .admin_post(
            "/_admin/accounts",
            &json!({"id": "shopA", "session": "sess-a", "expires_at_ms": soon, "refresh_token": "rt-a"}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    h.sim.add_order(order("tmall-tbc", "A1", "WAIT_BUYER_PAY"));

    let v = h.top(REFRESH, &[("refresh_token", "rt-a")]).await;
    let raw = v["top_auth_token_refresh_response"]["token_result"]
        .as_str()
        .unwrap_or_else(|| panic!("token_result is a JSON string: {v}"));
    let t: Value = serde_json::from_str(raw).expect("token_result JSON");
    assert_eq!(t["taobao_user_nick"], "shopA", "{t}");
    assert!(t["expires_in"].as_u64().unwrap_or(0) >= 3600, "{t}");
    let new_session = t["access_token"].as_str().expect("access_token").to_owned();
    let new_refresh = t["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned();
    assert_ne!(new_session, "sess-a");

    // The spent token is refused; the new one works.
    let v = h.top(REFRESH, &[("refresh_token", "rt-a")]).await;
    assert_eq!(v["error_response"]["code"], 15, "{v}");
    let v = h
        .top(REFRESH, &[("refresh_token", new_refresh.as_str())])
        .await;
    assert!(v["top_auth_token_refresh_response"].is_object(), "{v}");

    // The new session works; the old one too, until its own expiry.
    let v = h
        .top(
            GET,
            &[
                ("out_order_no", "A1"),
                ("source_site", "LAZADA_SG"),
                ("session", "sess-a"),
            ],
        )
        .await;
    assert_eq!(result(&v, GET)["success"], true, "{v}");
    let v = cancel(&h, "A1", Some(&new_session)).await;
    assert_eq!(result(&v, CANCEL)["success"], true, "{v}");
    let a = account(&h, "shopA").await;
    assert_eq!(a["refreshes"], 2, "{a}");
    assert_eq!(a["calls"], 2, "{a}");
    assert_eq!(a["sessions"].as_array().map(Vec::len), Some(3), "{a}");
    assert_eq!(a["sessions"][1]["calls"], 1, "{a}");
}

#[tokio::test]
async fn generate_assigns_owners_round_robin() {
    let h = Harness::new().await;
    let (st, v) = h
        .admin_post(
            "/_admin/generate",
            &json!({"seed": 3, "n": 4, "mix": {"channels": ["tmall-tbc"], "unpaid": 1}, "accounts": ["a", "b"]}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let rows = v["orders"].as_array().expect("orders");
    assert_eq!(rows[0]["account"], "a");
    assert_eq!(rows[1]["account"], "b");
    let id = rows[1]["order_id"].as_str().expect("id");
    assert_eq!(h.sim.order_account("tmall-tbc", id).as_deref(), Some("b"));
}
