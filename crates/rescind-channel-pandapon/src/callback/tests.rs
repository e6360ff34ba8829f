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

fn stored(body: &str, received_at_ms: u64) -> StoredCallback {
    let m = parse_callback(body.as_bytes()).unwrap();
    StoredCallback {
        v: CALLBACK_RECORD_VERSION,
        key: m.key(),
        received_at_ms,
        message: m,
    }
}

fn line_of(rec: &StoredCallback) -> String {
    serde_json::to_string(rec).unwrap() + "\n"
}

#[tokio::test]
async fn torn_last_line_is_dropped_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callbacks.jsonl");
    let recs: Vec<_> = (0..3)
        .map(|i| {
            stored(
                &refund_msg(1, &i.to_string(), "R", "refundsuccess", 1, true),
                1,
            )
        })
        .collect();
    let good: String = recs.iter().map(line_of).collect();
    // 1. No trailing newline: an append that never returned.
    std::fs::write(&path, format!("{good}{{\"v\":1,\"key\":\"ab")).unwrap();
    let store = FileCallbackStore::open(&path).unwrap();
    let torn = store.open_report().torn_tail.clone().expect("a torn tail");
    assert_eq!((torn.line, torn.offset), (4, good.len() as u64));
    assert_eq!(store.open_report().records, 3);
    assert!(store.open_report().skipped.is_empty());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good.len() as u64);
    assert_eq!(store.load_all().await.unwrap(), recs);
    drop(store);
    // 2. A newline but unreadable, last: also never acknowledged.
    std::fs::write(&path, format!("{good}{{\"v\":1,\"ke\n")).unwrap();
    let store = FileCallbackStore::open(&path).unwrap();
    assert!(store.open_report().torn_tail.is_some());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good.len() as u64);
    // The next append starts on a line of its own; a reopen is clean.
    let next = stored(&refund_msg(1, "9", "R", "refundsuccess", 1, true), 2);
    assert_eq!(store.append(&next).await.unwrap(), Appended::New);
    drop(store);
    let store = FileCallbackStore::open(&path).unwrap();
    assert!(store.open_report().is_clean(), "{:?}", store.open_report());
    assert_eq!(store.load_all().await.unwrap().len(), 4);
}

#[tokio::test]
async fn corrupt_middle_line_is_skipped_with_its_offset_and_a_glued_record_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callbacks.jsonl");
    let recs: Vec<_> = (0..4)
        .map(|i| {
            stored(
                &refund_msg(1, &i.to_string(), "R", "refundsuccess", 1, true),
                1,
            )
        })
        .collect();
    // Line 2: garbage. Line 3: what an older rescind wrote after a failed
    // append: a partial record glued to an acknowledged one.
    let l0 = line_of(&recs[0]);
    let garbage = "\u{0}\u{0}garbage\n";
    let glued = format!(r#"{{"v":1,"key":"3f2a","receiv{}"#, line_of(&recs[1]));
    let text = format!(
        "{l0}{garbage}{glued}{}{}",
        line_of(&recs[2]),
        line_of(&recs[3])
    );
    std::fs::write(&path, &text).unwrap();
    let store = FileCallbackStore::open(&path).unwrap();
    let r = store.open_report().clone();
    assert!(r.torn_tail.is_none());
    assert_eq!(r.records, 4, "{r:?}");
    assert_eq!(r.skipped.len(), 2, "{r:?}");
    assert_eq!(
        (
            r.skipped[0].line,
            r.skipped[0].offset,
            r.skipped[0].salvaged
        ),
        (2, l0.len() as u64, false)
    );
    assert_eq!(
        (
            r.skipped[1].line,
            r.skipped[1].offset,
            r.skipped[1].salvaged
        ),
        (3, (l0.len() + garbage.len()) as u64, true)
    );
    // Nothing is cut from the middle; every acknowledged record is there.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), text.len() as u64);
    assert_eq!(store.load_all().await.unwrap(), recs);
    assert_eq!(store.append(&recs[1]).await.unwrap(), Appended::Duplicate);
    // Compaction rewrites the file without the unreadable bytes.
    let rep = store.compact(0, &|_| true).await.unwrap();
    assert_eq!((rep.kept, rep.dropped, rep.unreadable_dropped), (4, 0, 1));
    drop(store);
    let store = FileCallbackStore::open(&path).unwrap();
    assert!(store.open_report().is_clean(), "{:?}", store.open_report());
    assert_eq!(store.load_all().await.unwrap(), recs);
}

#[test]
fn a_newer_record_version_refuses_to_open_naming_line_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callbacks.jsonl");
    let mut rec = stored(&refund_msg(1, "1", "R", "refundsuccess", 1, true), 1);
    let l0 = line_of(&rec);
    rec.v = CALLBACK_RECORD_VERSION + 1;
    std::fs::write(&path, format!("{l0}{}", line_of(&rec))).unwrap();
    match FileCallbackStore::open(&path).unwrap_err() {
        Error::StoreCorrupt {
            path: p,
            line,
            offset,
            ..
        } => assert_eq!((p, line, offset), (path.clone(), 2, l0.len() as u64)),
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn compaction_drops_old_messages_no_unfinished_saga_needs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callbacks.jsonl");
    let store = Arc::new(FileCallbackStore::open(&path).unwrap());
    let rx = CallbackReceiver::new(store.clone(), Arc::new(RecordingSink::default()));
    let old_done = stored(&refund_msg(1, "1", "R1", "refundsuccess", 1, true), 1_000);
    let old_live = stored(&refund_msg(1, "2", "R2", "waitselleragree", 1, true), 1_000);
    let old_unknown = stored(
        r#"{"messageType":"NEW","messagePlatform":0,"messageBody":{"a":1}}"#,
        1_000,
    );
    let recent = stored(&refund_msg(0, "3", "R3", "SUCCESS", 1, true), 90_000);
    for r in [&old_done, &old_live, &old_unknown, &recent] {
        assert_eq!(store.append(r).await.unwrap(), Appended::New);
    }
    let before = store.len_bytes();
    // Order 2 still has an unfinished saga; order 1's is finished.
    let live = |o: &OrderRef| o == &OrderRef::new(crate::ALIBABA_CHANNEL, "2");
    let rep = rx.compact(100_000, 50_000, &live).await.unwrap();
    assert_eq!((rep.kept, rep.dropped), (2, 2), "{rep:?}");
    assert_eq!(rep.bytes_before, before);
    assert_eq!(rep.bytes_after, store.len_bytes());
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        store.len_bytes(),
        "appends go to the rewritten file"
    );
    assert_eq!(
        store.load_all().await.unwrap(),
        vec![old_live.clone(), recent.clone()]
    );
    assert!(!path.with_file_name("callbacks.jsonl.compact-tmp").exists());
    // The dedup index follows: a kept key is still a duplicate, a dropped one is new.
    assert_eq!(store.append(&recent).await.unwrap(), Appended::Duplicate);
    assert_eq!(store.append(&old_done).await.unwrap(), Appended::New);
    drop(rx);
    drop(store);
    let store = FileCallbackStore::open(&path).unwrap();
    assert!(store.open_report().is_clean());
    assert_eq!(
        store.load_all().await.unwrap(),
        vec![old_live, recent, old_done]
    );
}

#[tokio::test]
async fn probe_reports_a_full_store_and_a_removed_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callbacks.jsonl");
    let rec = stored(&refund_msg(1, "1", "R", "refundsuccess", 1, true), 1);
    let n = line_of(&rec).len() as u64;
    let store =
        FileCallbackStore::open_with(&path, FileStoreOptions { max_bytes: n + 10 }).unwrap();
    store.probe().unwrap();
    assert_eq!(store.append(&rec).await.unwrap(), Appended::New);
    store.probe().unwrap();
    let other = stored(&refund_msg(1, "2", "R", "refundsuccess", 1, true), 1);
    match store.append(&other).await.unwrap_err() {
        Error::StoreFull { len, max, .. } => assert_eq!((len, max), (n, n + 10)),
        e => panic!("{e}"),
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), n, "nothing stored");
    let e = store.probe().unwrap_err();
    assert!(matches!(e, Error::StoreFull { .. }), "{e}");
    assert!(e.to_string().contains("callbacks.jsonl"), "{e}");
    // Compaction frees room and the store is healthy again.
    store.compact(u64::MAX, &|_| false).await.unwrap();
    store.probe().unwrap();
    // A file removed behind the store's back: appends would be lost at restart.
    std::fs::remove_file(&path).unwrap();
    let e = store.probe().unwrap_err();
    assert!(matches!(e, Error::Store { .. }), "{e}");
}

/// Serve the receiver on a loopback port; returns its callback URL.
async fn serve(rx: &CallbackReceiver) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = rx.router();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}{}", rx.path())
}

#[tokio::test]
async fn store_at_max_size_answers_503_over_http_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callbacks.jsonl");
    let first = refund_msg(1, "1", "R", "refundsuccess", 1, true);
    let n = line_of(&stored(&first, 1)).len() as u64;
    // Room for one record (received_at_ms may take a few more digits).
    let store = Arc::new(
        FileCallbackStore::open_with(&path, FileStoreOptions { max_bytes: n + 20 }).unwrap(),
    );
    let sink = Arc::new(RecordingSink::default());
    let rx = CallbackReceiver::new(store.clone(), sink.clone());
    let url = serve(&rx).await;
    let http = reqwest::Client::new();
    let post = |body: String| http.post(&url).body(body).send();
    assert_eq!(post(first.clone()).await.unwrap().status(), 200);
    let len = std::fs::metadata(&path).unwrap().len();
    let second = refund_msg(1, "2", "R", "refundsuccess", 1, true);
    let resp = post(second.clone()).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.text().await.unwrap().contains("full"));
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        len,
        "nothing stored"
    );
    // A re-push of what is already stored is still a 200 (duplicate).
    assert_eq!(post(first).await.unwrap().status(), 200);
    rx.settled().await;
    let s = rx.stats();
    assert_eq!((s.stored, s.store_full, s.duplicates), (1, 1, 1), "{s:?}");
    assert!(matches!(rx.probe(), Err(Error::StoreFull { .. })));
    assert_eq!(lock(&sink.0).len(), 1);
    drop(rx);
    let reopened = FileCallbackStore::open(&path).unwrap();
    let all = reopened.load_all().await.unwrap();
    assert_eq!(all.len(), 1);
    assert!(all[0].message.body.contains(r#""orderId":1"#));
}

#[tokio::test]
async fn callbacks_reach_channels_registered_under_other_names() {
    use crate::status::Platform;
    let sink = Arc::new(RecordingSink::default());
    let rx = CallbackReceiver::new(Arc::new(MemoryCallbackStore::new()), sink.clone())
        .with_channels(
            CallbackChannels::none()
                .with(Platform::Taobao, "pp-tb")
                .with(Platform::Alibaba, "pp-1688"),
        );
    let url = serve(&rx).await;
    let http = reqwest::Client::new();
    for body in [
        refund_msg(0, "\"T1\"", "R1", "SUCCESS", 1, true),
        refund_msg(1, "\"A1\"", "R2", "refundsuccess", 1, true),
        r#"{"messageType":"ORDER_STATUS_CHANGE","messagePlatform":1,"messageBody":{"orderId":7,"status":"cancel"}}"#.to_owned(),
    ] {
        let resp = http.post(&url).body(body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    rx.settled().await;
    let mut got: Vec<OrderRef> = lock(&sink.0)
        .iter()
        .map(|o| match o {
            Observation::Order { order, .. } | Observation::Refund { order, .. } => order.clone(),
        })
        .collect();
    got.sort_by(|a, b| a.order_id.as_str().cmp(b.order_id.as_str()));
    assert_eq!(
        got,
        vec![
            OrderRef::new("pp-1688", "7"),
            OrderRef::new("pp-1688", "A1"),
            OrderRef::new("pp-tb", "T1"),
        ]
    );
    // The orders a stored message concerns use the registered names too
    // (compaction asks about those).
    let rec = stored(&refund_msg(0, "\"T1\"", "R1", "SUCCESS", 1, true), 1);
    assert_eq!(rx.orders_of(&rec), vec![OrderRef::new("pp-tb", "T1")]);
    // No channel registered for a platform: stored, not delivered.
    let sink2 = Arc::new(RecordingSink::default());
    let rx2 = CallbackReceiver::new(Arc::new(MemoryCallbackStore::new()), sink2.clone())
        .with_channels(CallbackChannels::none().with(Platform::Taobao, "pp-tb"));
    let (status, _) = rx2
        .receive(refund_msg(1, "\"A1\"", "R2", "refundsuccess", 1, true).as_bytes())
        .await;
    assert_eq!(status, StatusCode::OK);
    rx2.settled().await;
    assert!(lock(&sink2.0).is_empty());
    assert_eq!((rx2.stats().stored, rx2.stats().not_delivered), (1, 1));
}

/// Forged, unsigned, badly signed, stale and replayed pushes over real HTTP:
/// each refused one is answered 401, stored nowhere, delivered to no saga.
#[tokio::test]
async fn only_signed_fresh_pushes_are_stored() {
    use rescind_wire::sign::{pandapon_message_signature, Secret};
    let secret = Secret::new("access-secret");
    let clock = Arc::new(rescind_core::TokioClock::system());
    let now = clock.now_ms();
    let store = Arc::new(MemoryCallbackStore::new());
    let sink = Arc::new(RecordingSink::default());
    let rx = CallbackReceiver::new(store.clone(), sink.clone())
        .with_clock(clock)
        .with_auth(CallbackAuth::new(vec![
            Secret::new("old-secret"),
            secret.clone(),
        ]));
    let url = serve(&rx).await;
    let http = reqwest::Client::new();
    let body = |ts: u64| {
        format!(
            r#"{{"messageType":"REFUND_STATUS_CHANGE","messagePlatform":0,"messageBody":{{"orderId":"T1","refundId":"R1","refundStatus":"SUCCESS"}},"timestamp":{ts}}}"#
        )
    };
    let sign = |b: &str, s: &Secret| pandapon_message_signature(b.as_bytes(), s);
    let fresh = body(now);
    let cases: Vec<(&str, String, Option<String>, &str)> = vec![
        ("unsigned", fresh.clone(), None, "unsigned"),
        (
            "signed with a wrong secret",
            fresh.clone(),
            Some(sign(&fresh, &Secret::new("guess"))),
            "bad signature",
        ),
        (
            "a signature of another body",
            fresh.clone(),
            Some(sign(&body(now + 1), &secret)),
            "bad signature",
        ),
        (
            "forged with timestamp 1",
            body(1),
            Some(sign(&body(1), &secret)),
            "window",
        ),
        (
            "an hour in the future",
            body(now + 3_600_000),
            Some(sign(&body(now + 3_600_000), &secret)),
            "window",
        ),
    ];
    for (what, b, auth, says) in &cases {
        let mut req = http.post(&url).body(b.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{what}");
        let text = resp.text().await.unwrap();
        assert!(text.contains(says), "{what}: {text}");
    }
    assert!(store.load_all().await.unwrap().is_empty(), "nothing stored");
    assert_eq!(rx.stats().refused, cases.len() as u64);
    // Signed with the current (or the old, while rotating) secret: stored.
    let ok = http
        .post(&url)
        .header("authorization", sign(&fresh, &secret).to_uppercase())
        .body(fresh.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // A replay of the same signed push is a duplicate: acknowledged, not acted on twice.
    let replay = http
        .post(&url)
        .header("authorization", sign(&fresh, &Secret::new("old-secret")))
        .body(fresh.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 200);
    rx.settled().await;
    assert_eq!(store.load_all().await.unwrap().len(), 1);
    assert_eq!(lock(&sink.0).len(), 1, "delivered once");
    let s = rx.stats();
    assert_eq!((s.stored, s.duplicates), (1, 1), "{s:?}");
}
