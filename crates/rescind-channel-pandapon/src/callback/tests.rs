use super::*;
use std::io::Write;
use tower::ServiceExt;

#[derive(Default)]
struct RecordingSink(Mutex<Vec<Observation>>);

impl CallbackSink for RecordingSink {
    fn deliver(&self, obs: Observation) -> usize {
        lock(&self.0).push(obs);
        1
    }
}

fn refund_msg(
    platform: i64,
    order: &str,
    refund: &str,
    status: &str,
    ts: u64,
    body_as_string: bool,
) -> String {
    let body = format!(r#"{{"orderId":{order},"refundId":"{refund}","refundStatus":"{status}"}}"#);
    let body = if body_as_string {
        serde_json::Value::String(body).to_string()
    } else {
        body
    };
    format!(
        r#"{{"messageType":"REFUND_STATUS_CHANGE","messageBody":{body},"messagePlatform":{platform},"timestamp":{ts}}}"#
    )
}

#[test]
fn parse_table() {
    let ok = parse_callback(
        refund_msg(1, "2542285634920880794", "R1", "refundsuccess", 5, true).as_bytes(),
    )
    .unwrap();
    assert_eq!(ok.message_type, REFUND_STATUS_CHANGE);
    assert_eq!((ok.platform, ok.timestamp_ms), (Some(1), Some(5)));
    assert!(ok.body.contains("2542285634920880794"));
    let lenient = parse_callback(
        br#"{"messageType":"X","messagePlatform":"0","timestamp":"17","messageBody":null}"#,
    )
    .unwrap();
    assert_eq!(
        (
            lenient.platform,
            lenient.timestamp_ms,
            lenient.body.as_str()
        ),
        (Some(0), Some(17), "")
    );
    for bad in [
        &b""[..],
        b"null",
        b"[]",
        b"[\"REFUND_STATUS_CHANGE\"]",
        b"{}",
        b"{\"messageType\":\"\"}",
        b"{\"messageType\":{}}",
        b"\xff\xfe",
        b"{\"messageType\":\"A\",\"messageBody\":\"\\ud800\"}",
    ] {
        assert!(
            parse_callback(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn interpret_maps_channels_and_big_ids() {
    let m = parse_callback(
        refund_msg(1, "2542285634920880794", "R1", "refundsuccess", 5, false).as_bytes(),
    )
    .unwrap();
    match m.interpret().unwrap() {
        CallbackEvent::Refund {
            order,
            refund_id,
            status,
        } => {
            assert_eq!(order, OrderRef::new("pandapon-1688", "2542285634920880794"));
            assert_eq!(refund_id.as_str(), "R1");
            assert_eq!(status.state, RefundState::Completed);
        }
        other => panic!("{other:?}"),
    }
    let m = parse_callback(refund_msg(0, "\"T1\"", "R2", "CLOSED", 5, true).as_bytes()).unwrap();
    assert!(
        matches!(m.interpret().unwrap(), CallbackEvent::Refund { order, status, .. }
        if order.channel.as_str() == "pandapon-taobao" && status.state == RefundState::Withdrawn)
    );
    // Unknown words, unknown platforms, missing fields: errors that say so.
    for (msg, needle) in [
        (refund_msg(1, "1", "R", "bogus", 1, true), "\"bogus\""),
        (refund_msg(7, "1", "R", "refundsuccess", 1, true), "messagePlatform"),
        (r#"{"messageType":"REFUND_STATUS_CHANGE","messagePlatform":1,"messageBody":"{}"}"#.to_owned(), "messageBody"),
        (r#"{"messageType":"ORDER_STATUS_CHANGE","messagePlatform":1,"messageBody":{"orderId":1,"status":"nope"}}"#.to_owned(), "\"nope\""),
    ] {
        let e = parse_callback(msg.as_bytes()).unwrap().interpret().unwrap_err();
        assert!(e.contains(needle), "{e}");
    }
    // Order words: unambiguous ones map, paid-family ones without refund info do not.
    let order = |status: &str| {
        let m = format!(
            r#"{{"messageType":"ORDER_STATUS_CHANGE","messagePlatform":1,"messageBody":{{"orderId":7,"status":"{status}"}}}}"#
        );
        match parse_callback(m.as_bytes()).unwrap().interpret().unwrap() {
            CallbackEvent::Order { status, .. } => status.map(|s| s.state),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(order("waitbuyerpay"), Some(OrderState::PendingPay));
    assert_eq!(order("cancel"), Some(OrderState::Cancelled));
    assert_eq!(order("waitsellersend"), None);
    assert_eq!(order("terminated"), None);
}

#[test]
fn key_ignores_timestamp_encoding_and_field_order() {
    let a = parse_callback(refund_msg(1, "9", "R1", "refundsuccess", 1, true).as_bytes()).unwrap();
    let b =
        parse_callback(refund_msg(1, "9", "R1", "refundsuccess", 999, false).as_bytes()).unwrap();
    let c = parse_callback(
        br#"{"timestamp":3,"messagePlatform":1,"messageBody":{"refundStatus":"refundsuccess","refundId":"R1","orderId":"9"},"messageType":"REFUND_STATUS_CHANGE"}"#,
    )
    .unwrap();
    assert_eq!(a.key(), b.key());
    assert_eq!(a.key(), c.key());
    let d =
        parse_callback(refund_msg(1, "9", "R1", "waitselleragree", 1, true).as_bytes()).unwrap();
    assert_ne!(a.key(), d.key());
    let e = parse_callback(refund_msg(0, "9", "R1", "refundsuccess", 1, true).as_bytes()).unwrap();
    assert_ne!(a.key(), e.key());
    // Unknown types: canonical body, key order irrelevant.
    let u1 = parse_callback(
        br#"{"messageType":"NEW","messagePlatform":0,"messageBody":{"a":1,"b":[2,{"y":1,"x":2}]}}"#,
    )
    .unwrap();
    let u2 = parse_callback(br#"{"messageType":"NEW","messagePlatform":0,"messageBody":"{\"b\":[2,{\"x\":2,\"y\":1}],\"a\":1}"}"#).unwrap();
    assert_eq!(u1.key(), u2.key());
}

fn receiver() -> (
    CallbackReceiver,
    Arc<RecordingSink>,
    Arc<MemoryCallbackStore>,
) {
    let sink = Arc::new(RecordingSink::default());
    let store = Arc::new(MemoryCallbackStore::new());
    (
        CallbackReceiver::new(store.clone(), sink.clone()),
        sink,
        store,
    )
}

#[tokio::test]
async fn duplicates_and_reordering() {
    let (rx, sink, store) = receiver();
    let done = refund_msg(1, "9", "R1", "refundsuccess", 10, true);
    let open = refund_msg(1, "9", "R1", "waitselleragree", 1, true);
    // Completed arrives first, then twice re-pushed (once re-encoded), then the older "open".
    for body in [
        &done,
        &done,
        &refund_msg(1, "9", "R1", "refundsuccess", 99, false),
        &open,
    ] {
        let (status, _) = rx.receive(body.as_bytes()).await;
        assert_eq!(status, StatusCode::OK);
    }
    rx.settled().await;
    let s = rx.stats();
    assert_eq!(
        (s.received, s.stored, s.duplicates, s.delivered, s.stale),
        (4, 2, 2, 1, 1),
        "{s:?}"
    );
    assert_eq!(store.load_all().await.unwrap().len(), 2);
    let got = lock(&sink.0).clone();
    assert_eq!(got.len(), 1);
    assert!(
        matches!(&got[0], Observation::Refund { status, .. } if status.state == RefundState::Completed)
    );
}

#[tokio::test]
async fn unknown_types_are_stored_and_reported() {
    let (rx, sink, store) = receiver();
    let (status, _) = rx
        .receive(br#"{"messageType":"LOGISTICS_CHANGE","messagePlatform":0,"messageBody":"{\"x\":1}","timestamp":1}"#)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = rx
        .receive(refund_msg(1, "9", "R1", "weird", 1, true).as_bytes())
        .await;
    assert_eq!(status, StatusCode::OK);
    rx.settled().await;
    let s = rx.stats();
    assert_eq!(
        (s.stored, s.unknown_type, s.unmappable, s.delivered),
        (2, 1, 1, 0)
    );
    assert_eq!(rx.unknown().len(), 1);
    assert_eq!(rx.unknown()[0].message.message_type, "LOGISTICS_CHANGE");
    assert_eq!(rx.reported().len(), 2);
    assert_eq!(store.load_all().await.unwrap().len(), 2);
    assert!(lock(&sink.0).is_empty());
}

#[tokio::test]
async fn router_answers_200_400_and_replays() {
    let (rx, sink, _store) = receiver();
    let app = rx.router();
    let post = |body: String| {
        http::Request::builder()
            .method("POST")
            .uri(DEFAULT_CALLBACK_PATH)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .unwrap()
    };
    let resp = app
        .clone()
        .oneshot(post(refund_msg(0, "\"T\"", "R", "SUCCESS", 1, true)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app.clone().oneshot(post("{not json".into())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&bytes).contains("not a PandaPon callback"));
    let resp = app
        .clone()
        .oneshot(post("x".repeat(CALLBACK_BODY_BYTES_MAX + 1)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    rx.settled().await;
    assert_eq!(lock(&sink.0).len(), 1);
    assert_eq!(rx.stats().malformed, 1);
    // Replay re-processes what is stored (idempotent downstream).
    assert_eq!(rx.replay().await.unwrap(), 1);
    assert_eq!(lock(&sink.0).len(), 2);
}

struct FailingStore;

#[async_trait]
impl CallbackStore for FailingStore {
    async fn append(&self, _rec: &StoredCallback) -> Result<Appended> {
        Err(Error::Store {
            path: "/dev/full".into(),
            source: std::io::Error::other("disk full"),
        })
    }
    async fn load_all(&self) -> Result<Vec<StoredCallback>> {
        Ok(vec![])
    }
}

#[tokio::test]
async fn store_failure_answers_500_so_it_is_re_pushed() {
    let sink = Arc::new(RecordingSink::default());
    let rx = CallbackReceiver::new(Arc::new(FailingStore), sink.clone());
    let (status, _) = rx
        .receive(refund_msg(0, "1", "R", "SUCCESS", 1, true).as_bytes())
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    rx.settled().await;
    assert!(lock(&sink.0).is_empty());
    assert_eq!(rx.stats().store_errors, 1);
}

#[tokio::test]
async fn file_store_is_durable_dedups_across_reopen_and_answers_fast() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callbacks.jsonl");
    {
        let store = Arc::new(FileCallbackStore::open(&path).unwrap());
        let rx = CallbackReceiver::new(store, Arc::new(RecordingSink::default()));
        for i in 0..20 {
            let t0 = std::time::Instant::now();
            let (status, _) = rx
                .receive(refund_msg(1, &i.to_string(), "R", "refundsuccess", 1, true).as_bytes())
                .await;
            assert_eq!(status, StatusCode::OK);
            // Well inside PandaPon's 1000 ms budget, fsync included.
            assert!(
                t0.elapsed() < std::time::Duration::from_millis(500),
                "{:?}",
                t0.elapsed()
            );
        }
        rx.settled().await;
    }
    let store = FileCallbackStore::open(&path).unwrap();
    assert_eq!(store.load_all().await.unwrap().len(), 20);
    let again =
        parse_callback(refund_msg(1, "3", "R", "refundsuccess", 77, false).as_bytes()).unwrap();
    let rec = StoredCallback {
        v: 1,
        key: again.key(),
        received_at_ms: 0,
        message: again,
    };
    assert_eq!(store.append(&rec).await.unwrap(), Appended::Duplicate);
    drop(store);

    // A torn tail (an append that never returned) is cut off on open.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(br#"{"v":1,"key":"abc","rece"#).unwrap();
    drop(f);
    let store = FileCallbackStore::open(&path).unwrap();
    assert_eq!(store.load_all().await.unwrap().len(), 20);
    let new =
        parse_callback(refund_msg(1, "100", "R", "refundsuccess", 1, true).as_bytes()).unwrap();
    let rec = StoredCallback {
        v: 1,
        key: new.key(),
        received_at_ms: 0,
        message: new,
    };
    assert_eq!(store.append(&rec).await.unwrap(), Appended::New);
    assert_eq!(store.load_all().await.unwrap().len(), 21);
    drop(store);

    // Garbage in the middle is skipped with its line and offset reported;
    // it never blocks the store from opening.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let offset: usize = lines[..4].iter().map(|l| l.len() + 1).sum();
    lines[4] = "garbage";
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let store = FileCallbackStore::open(&path).unwrap();
    let report = store.open_report();
    assert_eq!(report.records, 20);
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    assert_eq!(
        (report.skipped[0].line, report.skipped[0].offset),
        (5, offset as u64)
    );
    assert_eq!(store.load_all().await.unwrap().len(), 20);
}
