//! The TOP message service (TMC) over real HTTP: messages published where a
//! TBC refund changes or an order closes, consume hides and redelivers,
//! confirm removes, the duplicate and reorder knobs, the counters.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const PAID: &str = "tmall.tbc.order.paidcancel";
const GET: &str = "tmall.tbc.order.get";
const CONSUME: &str = "taobao.tmc.messages.consume";
const CONFIRM: &str = "taobao.tmc.messages.confirm";

fn messages(v: &Value) -> Vec<Value> {
    v["tmc_messages_consume_response"]["messages"]["tmc_message"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn topics(ms: &[Value]) -> Vec<String> {
    ms.iter()
        .map(|m| m["topic"].as_str().unwrap_or("?").to_owned())
        .collect()
}

fn ids(ms: &[Value]) -> String {
    ms.iter()
        .map(|m| m["id"].to_string())
        .collect::<Vec<_>>()
        .join(",")
}

async fn stats(h: &Harness) -> Value {
    let (s, v) = h.admin_get("/_admin/tmc").await;
    assert_eq!(s, 200, "{v}");
    v["stats"].clone()
}

/// Open and complete a refund on a paid order: three messages (created,
/// success, trade closed), in the sim's order.
async fn refund_and_complete(h: &Harness, order_id: &str) {
    h.sim
        .add_order(order("tmall-tbc", order_id, "WAIT_SELLER_SEND_GOODS"));
    let v = h
        .top(PAID, &[("out_order_no", order_id), ("source_site", "X")])
        .await;
    assert_eq!(
        v["tmall_tbc_order_paidcancel_response"]["result"]["success"], true,
        "{v}"
    );
    let (s, v) = h
        .admin_post(
            "/_admin/schedule",
            &json!([{"after_ms": 0, "channel": "tmall-tbc", "order_id": order_id, "action": "complete_refund"}]),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    h.sim.order("tmall-tbc", order_id); // applies the due event
}

#[tokio::test]
async fn consume_hides_confirm_removes_unconfirmed_come_back() {
    let h = Harness::new().await;
    // Off: no messages, and the methods say so.
    refund_and_complete(&h, "O0").await;
    let v = h.top(CONSUME, &[("group_name", "default")]).await;
    assert_eq!(
        v["error_response"]["sub_code"], "isv.tmc-not-enabled",
        "{v}"
    );
    let (s, v) = h
        .admin_post(
            "/_admin/tmc",
            &json!({"enabled": true, "redeliver_after_ms": 400}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["settings"]["group_name"], "default");
    let (s, v) = h
        .admin_post("/_admin/tmc", &json!({"enabled": true, "bogus": 1}))
        .await;
    assert_eq!(s, 400, "unknown keys are refused: {v}");
    let (s, _) = h
        .admin_post(
            "/_admin/tmc",
            &json!({"enabled": true, "duplicate_probability": 2.0}),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = h
        .admin_post(
            "/_admin/tmc",
            &json!({"enabled": true, "redeliver_after_ms": 400}),
        )
        .await;
    assert_eq!(s, 200);

    refund_and_complete(&h, "O1").await;
    assert_eq!(stats(&h).await["published"], 3);
    // Bad quantity: a typed TOP error naming it.
    let v = h.top(CONSUME, &[("quantity", "201")]).await;
    assert_eq!(
        v["error_response"]["sub_code"], "isv.invalid-parameter:quantity",
        "{v}"
    );
    // Two of three, then the third; the first two are hidden meanwhile.
    let first = messages(&h.top(CONSUME, &[("quantity", "2")]).await);
    assert_eq!(
        topics(&first),
        ["taobao_refund_RefundCreated", "taobao_refund_RefundSuccess"]
    );
    let m = &first[1];
    assert_eq!(m["user_nick"], "sim-tbc-seller");
    let content: Value = serde_json::from_str(m["content"].as_str().expect("content is a string"))
        .expect("content is JSON");
    assert_eq!(content["tid"], "O1");
    assert!(content["refund_id"].as_str().is_some_and(|r| !r.is_empty()));
    let second = messages(&h.top(CONSUME, &[("quantity", "100")]).await);
    assert_eq!(topics(&second), ["taobao_trade_TradeClose"]);
    assert!(messages(&h.top(CONSUME, &[]).await).is_empty());
    // Confirm the first batch; the second comes back after 400 ms unconfirmed.
    let v = h
        .top(
            CONFIRM,
            &[("group_name", "default"), ("s_message_ids", &ids(&first))],
        )
        .await;
    assert_eq!(
        v["tmc_messages_confirm_response"]["is_success"], true,
        "{v}"
    );
    let v = h.top(CONFIRM, &[("s_message_ids", "1,x")]).await;
    assert_eq!(
        v["error_response"]["sub_code"], "isv.invalid-parameter:s_message_ids",
        "{v}"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let again = messages(&h.top(CONSUME, &[]).await);
    assert_eq!(topics(&again), ["taobao_trade_TradeClose"]);
    assert_eq!(again[0]["id"], second[0]["id"], "redelivered under its id");
    // Another group sees nothing.
    assert!(messages(&h.top(CONSUME, &[("group_name", "other")]).await).is_empty());
    h.top(CONFIRM, &[("s_message_ids", &ids(&again))]).await;
    let st = stats(&h).await;
    assert_eq!(
        (
            &st["published"],
            &st["consumed"],
            &st["redelivered"],
            &st["confirmed"],
            &st["queued"]
        ),
        (&json!(3), &json!(4), &json!(1), &json!(3), &json!(0)),
        "{st}"
    );
}

#[tokio::test]
async fn lookups_and_refund_polls_are_counted_per_order() {
    let h = Harness::new().await;
    h.sim
        .add_order(order("tmall-tbc", "P1", "WAIT_SELLER_SEND_GOODS"));
    let get = || h.top(GET, &[("out_order_no", "P1"), ("source_site", "X")]);
    get().await;
    h.top(PAID, &[("out_order_no", "P1"), ("source_site", "X")])
        .await;
    get().await;
    get().await;
    h.admin_post(
        "/_admin/schedule",
        &json!([{"after_ms": 0, "channel": "tmall-tbc", "order_id": "P1", "action": "complete_refund"}]),
    )
    .await;
    get().await;
    let st = stats(&h).await;
    assert_eq!(st["order_lookups"]["P1"], 4, "{st}");
    assert_eq!(
        st["refund_polls"]["P1"], 2,
        "only while the refund was open: {st}"
    );
    assert_eq!(st["published"], 0, "TMC off: nothing queued");
}

#[tokio::test]
async fn duplicate_and_reorder_knobs() {
    let h = Harness::new().await;
    h.admin_post(
        "/_admin/tmc",
        &json!({"enabled": true, "duplicate_probability": 1.0, "reorder": true}),
    )
    .await;
    refund_and_complete(&h, "D1").await;
    let batch = messages(&h.top(CONSUME, &[]).await);
    assert_eq!(
        topics(&batch),
        [
            "taobao_trade_TradeClose",
            "taobao_trade_TradeClose",
            "taobao_refund_RefundSuccess",
            "taobao_refund_RefundSuccess",
            "taobao_refund_RefundCreated",
            "taobao_refund_RefundCreated",
        ],
        "each twice, newest first"
    );
    assert_ne!(batch[0]["id"], batch[1]["id"], "a copy has its own id");
    let st = stats(&h).await;
    assert_eq!(
        (&st["published"], &st["duplicated"]),
        (&json!(6), &json!(3))
    );
    // Reset empties the queues and the counters.
    h.admin_post("/_admin/reset", &json!({})).await;
    assert_eq!(stats(&h).await["queued"], 0);
}
