//! OpenTelemetry traces end to end (feature `otel`, on for this crate's
//! tests through its dev-dependency on itself).
//!
//! An in-process OTLP receiver (axum on loopback, `POST /v1/traces`,
//! protobuf decoded with `opentelemetry-proto`'s types) gets the spans of a
//! worker started in-process from a configuration with `[telemetry]`,
//! driving a saga against the real simulator over loopback HTTP: an unpaid
//! TBC cancel whose first call meets an `isp.*` fault, then the Damai stock
//! release. The test checks the trace's shape — the saga span is a root,
//! both step spans are its children, each call span a child of its step,
//! all in one trace — and the attributes: saga id, kind, channel, action,
//! attempt, outcome, and the upstream error code of the failed call.
#![cfg(feature = "otel")]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use prost::Message as _;
use rescind_core::{OrderRef, SagaExit, SagaInput, StockLockRef};
use rescind_server::config::Config;
use rescind_server::otel::{OtelSettings, Telemetry};
use rescind_server::simconfig::{simulator_channels_toml, SimSecretsEnv};
use rescind_sim::{FaultKind, FaultProfile, FaultSpec, OrderSeed, Sim, SimConfig};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Spans received, each with its resource's `service.name`.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// The OTLP/HTTP receiver: protobuf in, an empty protobuf response out.
async fn receive(
    State(got): State<Received>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut out = HeaderMap::new();
    out.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-protobuf"),
    );
    let protobuf = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/x-protobuf");
    if !protobuf {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, out, Vec::new());
    }
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, out, Vec::new());
    };
    let mut got = got.lock().unwrap();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| str_attr(&r.attributes, "service.name"))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                got.push((service.clone(), span));
            }
        }
    }
    let reply = ExportTraceServiceResponse::default().encode_to_vec();
    (StatusCode::OK, out, reply)
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key)? {
        any_value::Value::IntValue(n) => Some(*n),
        _ => None,
    }
}

/// A string attribute that must be there.
fn s(span: &Span, key: &str) -> String {
    str_attr(&span.attributes, key).unwrap_or_else(|| {
        panic!(
            "span {:?} has no string {key}: {:?}",
            span.name, span.attributes
        )
    })
}

/// An integer attribute that must be there.
fn n(span: &Span, key: &str) -> i64 {
    int_attr(&span.attributes, key).unwrap_or_else(|| {
        panic!(
            "span {:?} has no integer {key}: {:?}",
            span.name, span.attributes
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_is_one_trace_of_steps_and_upstream_calls() {
    // The receiver.
    let got: Received = Arc::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(receive))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The simulator: the TBC cancel's first call meets an `isp.*` fault.
    let sim = Sim::new(SimConfig::default());
    let server = sim.serve("127.0.0.1:0").await.unwrap();
    for (channel, id, status, lock) in [
        ("tmall-tbc", "OT1", "WAIT_BUYER_PAY", None),
        ("damai", "L1", "WAIT_PAY", Some("L1")),
    ] {
        sim.add_order(OrderSeed {
            channel: channel.into(),
            order_id: id.into(),
            status: status.into(),
            refund: None,
            stock_lock: lock.map(str::to_owned),
        });
    }
    sim.set_faults(FaultProfile::none().with(
        rescind_sim::defaults::CANCEL_METHOD,
        FaultSpec::scripted([FaultKind::Isp]),
    ));

    // The configuration, `[telemetry]` included.
    let dir = tempfile::tempdir().unwrap();
    let env = SimSecretsEnv {
        top_app_secret: "OTEL_TEST_TOP_SECRET",
        damai_supplier_secret: "OTEL_TEST_DAMAI_SECRET",
        pandapon_secret: "OTEL_TEST_PANDAPON_SECRET",
    };
    let text = format!(
        "[journal]\npath = \"journal\"\n\n[engine]\nbackoff_initial_ms = 10\nbackoff_max_ms = 50\n\n\
         [worker]\nlisten = \"127.0.0.1:0\"\nrecover_interval_ms = 60000\n\n\
         [telemetry]\notlp_endpoint = \"http://{otlp}\"\n\n{}",
        simulator_channels_toml(&server.base_url, &env, None)
    );
    let config = Config::from_toml_str(&text, dir.path(), &|v| env.lookup(v)).unwrap();
    let mut settings = OtelSettings::resolve(&config.telemetry, &|_| None)
        .unwrap()
        .expect("an endpoint is configured");
    assert_eq!(settings.traces_url, format!("http://{otlp}/v1/traces"));
    settings.batch_delay = Duration::from_millis(100);
    let telemetry = Arc::new(Telemetry::start(settings).unwrap());
    tracing_subscriber::registry()
        .with(telemetry.layer())
        .try_init()
        .unwrap();

    // The run.
    let worker = rescind_server::worker::start_worker(&config, None)
        .await
        .unwrap();
    let input = SagaInput::cancel_unpaid(OrderRef::new("tmall-tbc", "OT1"))
        .with_stock_lock(StockLockRef::new("damai", "L1"));
    let (id, exit) = worker.engine.run(input).await.unwrap();
    assert!(
        matches!(
            exit,
            SagaExit::Finished(rescind_core::SagaOutcome::Completed { .. })
        ),
        "{exit:?}"
    );
    let id = id.to_string();

    // Wait for the saga span (it ends just after the saga's task reports).
    let deadline = Instant::now() + Duration::from_secs(10);
    let spans: Vec<(String, Span)> = loop {
        let t = telemetry.clone();
        tokio::task::spawn_blocking(move || t.flush())
            .await
            .unwrap()
            .unwrap();
        let spans = got.lock().unwrap().clone();
        let done = spans.iter().any(|(_, sp)| sp.name == "saga");
        if done || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    worker.shutdown().await;
    server.shutdown().await;

    let ours: Vec<&Span> = spans
        .iter()
        .filter(|(_, sp)| str_attr(&sp.attributes, "saga").as_deref() == Some(id.as_str()))
        .map(|(_, sp)| sp)
        .collect();
    let names: Vec<&str> = ours.iter().map(|sp| sp.name.as_str()).collect();
    assert!(
        spans.iter().all(|(service, _)| service == "rescind"),
        "service.name"
    );

    // The saga span: the root of its trace.
    let sagas: Vec<&&Span> = ours.iter().filter(|sp| sp.name == "saga").collect();
    assert_eq!(sagas.len(), 1, "one saga span: {names:?}");
    let saga = sagas[0];
    assert!(saga.parent_span_id.is_empty(), "the saga span has a parent");
    assert_eq!(s(saga, "kind"), "cancel_unpaid");
    assert_eq!(s(saga, "channel"), "tmall-tbc");
    assert_eq!(s(saga, "order"), "OT1");
    assert_eq!(s(saga, "run"), "start");
    assert_eq!(s(saga, "outcome"), "completed");
    for sp in &ours {
        assert_eq!(sp.trace_id, saga.trace_id, "{} in another trace", sp.name);
    }

    // The steps: children of the saga span.
    let step = |action: &str| -> &Span {
        let found: Vec<&&Span> = ours
            .iter()
            .filter(|sp| sp.name == "step" && s(sp, "action") == action)
            .collect();
        assert_eq!(found.len(), 1, "one {action} step: {names:?}");
        found[0]
    };
    let cancel = step("cancel_unpaid");
    let release = step("release_stock");
    for (st, channel, number, attempts, outcome) in [
        (cancel, "tmall-tbc", 0, 2, "cancelled"),
        (release, "damai", 1, 1, "stock_released"),
    ] {
        assert_eq!(st.parent_span_id, saga.span_id, "step {number}'s parent");
        assert_eq!(s(st, "channel"), channel);
        assert_eq!(n(st, "step"), number);
        assert_eq!(n(st, "attempts"), attempts, "step {number}");
        assert_eq!(s(st, "outcome"), outcome);
        assert_eq!(s(st, "via"), "reply");
    }

    // The calls: children of their step, numbered, with outcome and code.
    let calls_of = |st: &Span| -> Vec<&Span> {
        let mut v: Vec<&Span> = ours
            .iter()
            .copied()
            .filter(|sp| sp.name == "call" && sp.parent_span_id == st.span_id)
            .collect();
        v.sort_by_key(|sp| n(sp, "attempt"));
        v
    };
    let calls = calls_of(cancel);
    assert_eq!(calls.len(), 2, "two calls of the cancel: {names:?}");
    let (failed, ok) = (calls[0], calls[1]);
    assert_eq!(n(failed, "attempt"), 1);
    // `isp.top-remote-connection-timeout` may have been applied (in doubt);
    // `isp.top-remote-service-unavailable` certainly was not (retryable).
    let first = s(failed, "outcome");
    assert!(
        ["in_doubt", "retryable"].contains(&first.as_str()),
        "{first}"
    );
    // An in-doubt call is looked up before it is sent again: that lookup is
    // a child of the step too.
    let lookups: Vec<&&Span> = ours.iter().filter(|sp| sp.name == "lookup").collect();
    for l in &lookups {
        assert_eq!(l.parent_span_id, cancel.span_id, "the lookup's parent");
        assert_eq!(s(l, "action"), "cancel_unpaid");
        assert_eq!(n(l, "attempt"), 1);
        assert_eq!(s(l, "outcome"), "not_applied");
    }
    assert_eq!(lookups.len(), usize::from(first == "in_doubt"), "{names:?}");
    assert!(
        ["10", "15"].contains(&s(failed, "error_code").as_str()),
        "{:?}",
        failed.attributes
    );
    assert!(s(failed, "error_sub_code").starts_with("isp."));
    assert_eq!(
        failed.status.as_ref().map(|st| st.code),
        Some(2),
        "an error status"
    );
    assert_eq!(n(ok, "attempt"), 2);
    assert_eq!(s(ok, "outcome"), "ok");
    assert_eq!(str_attr(&ok.attributes, "error_code"), None);
    for c in [failed, ok] {
        assert_eq!(s(c, "action"), "cancel_unpaid");
        assert_eq!(s(c, "channel"), "tmall-tbc");
        assert_eq!(c.kind, SpanKind::Client as i32);
    }
    let calls = calls_of(release);
    assert_eq!(calls.len(), 1, "one call of the release: {names:?}");
    assert_eq!(n(calls[0], "attempt"), 1);
    assert_eq!(s(calls[0], "channel"), "damai");
    assert_eq!(s(calls[0], "action"), "release_stock");
    assert_eq!(s(calls[0], "outcome"), "ok");
    assert_eq!(
        names.iter().filter(|n| **n == "call").count(),
        3,
        "no call outside the steps: {names:?}"
    );
    match Arc::try_unwrap(telemetry) {
        Ok(t) => tokio::task::spawn_blocking(move || t.shutdown())
            .await
            .unwrap()
            .unwrap(),
        Err(_) => panic!("the telemetry is still shared"),
    }
}
