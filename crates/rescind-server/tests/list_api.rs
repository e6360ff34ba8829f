//! `GET /sagas` over real loopback HTTP against a sled journal: the filters,
//! paging with `next_cursor`, and 400s naming the bad parameter.

use rescind_core::{
    Engine, Entry, Journal, OrderRef, OrderState, Record, SagaId, SagaInput, SagaOutcome,
};
use rescind_journal_sled::{SledConfig, SledJournal};
use rescind_server::worker::{router, ApiState};
use serde_json::Value;
use std::sync::Arc;

/// Saga `n`: channel/order from `n`, stuck when `n % 3 == 1`, completed when
/// `n % 3 == 2`, running otherwise.
async fn write_saga(j: &SledJournal, n: u128) -> SagaId {
    let id = SagaId::from_u128(0x5a9a_0000 + n);
    let channel = if n.is_multiple_of(2) {
        "tmall-tbc"
    } else {
        "damai"
    };
    let input = SagaInput::cancel_unpaid(OrderRef::new(channel, format!("o{}", n / 2)))
        .with_account(if n < 5 { "shop-a" } else { "shop-b" });
    let mut entries = vec![Entry {
        seq: 0,
        at_ms: 1_000 + n as u64,
        record: Record::Started { input, by: None },
    }];
    match n % 3 {
        1 => entries.push(Entry {
            seq: 1,
            at_ms: 2_000 + n as u64,
            record: Record::Stuck {
                reason: "test".into(),
            },
        }),
        2 => entries.push(Entry {
            seq: 1,
            at_ms: 2_000 + n as u64,
            record: Record::Finished {
                outcome: SagaOutcome::Completed {
                    order: OrderState::Cancelled,
                    note: None,
                },
            },
        }),
        _ => {}
    }
    j.append(id, &entries[0]).await.expect("append");
    j.append_batch(id, &entries[1..], n % 3 == 2)
        .await
        .expect("append");
    id
}

async fn serve(journal: Arc<SledJournal>) -> String {
    let dynj: Arc<dyn Journal> = journal;
    let engine = Engine::builder(Arc::clone(&dynj)).build();
    let app = router(ApiState::new(engine, dynj));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(url)
        .send()
        .await
        .expect("get");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json"))
}

fn ids(v: &Value) -> Vec<String> {
    v["sagas"]
        .as_array()
        .expect("sagas")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_pages_and_names_bad_parameters() {
    let dir = tempfile::tempdir().expect("tmp");
    let j = Arc::new(
        SledJournal::open(dir.path(), SledConfig::default())
            .await
            .expect("open"),
    );
    let mut all = Vec::new();
    for n in 0..12 {
        all.push(write_saga(&j, n).await.to_string());
    }
    all.sort();
    let base = serve(Arc::clone(&j)).await;

    // Stuck ones only, and the UI's empty parameters are no filter.
    let (st, v) = get(&format!(
        "{base}/sagas?state=stuck&channel=&kind=&account=&since=&cursor="
    ))
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(ids(&v).len(), 4, "{v}");
    assert!(v["sagas"]
        .as_array()
        .expect("sagas")
        .iter()
        .all(|s| s["state"] == "stuck"));
    assert_eq!(v["next_cursor"], Value::Null);
    assert_eq!(v["unreadable"], serde_json::json!([]));

    // By order: sagas 4 and 5 are o2 on different channels.
    let (_, v) = get(&format!("{base}/sagas?order=tmall-tbc:o2")).await;
    assert_eq!(
        ids(&v),
        vec![SagaId::from_u128(0x5a9a_0000 + 4).to_string()]
    );
    let (_, v) = get(&format!("{base}/sagas?account=shop-a&state=completed")).await;
    assert_eq!(
        ids(&v),
        vec![SagaId::from_u128(0x5a9a_0000 + 2).to_string()]
    );
    let (_, v) = get(&format!("{base}/sagas?set=finished")).await;
    assert_eq!(ids(&v).len(), 4);

    // Paging: each saga once, in id order, then no cursor.
    let mut seen = Vec::new();
    let mut url = format!("{base}/sagas?limit=5");
    loop {
        let (st, v) = get(&url).await;
        assert_eq!(st, 200, "{v}");
        assert!(ids(&v).len() <= 5);
        seen.extend(ids(&v));
        match v["next_cursor"].as_str() {
            Some(c) => url = format!("{base}/sagas?limit=5&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, all);

    for (q, param) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("state=waiting", "state"),
        ("order=nocolon", "order"),
        ("since=yesterday", "since"),
        ("set=some", "set"),
        ("cursor=zz", "cursor"),
    ] {
        let (st, v) = get(&format!("{base}/sagas?{q}")).await;
        assert_eq!(st, 400, "{q}: {v}");
        assert_eq!(v["field"], param, "{q}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains(param)),
            "{q}: {v}"
        );
    }
}
