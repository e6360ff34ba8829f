//! Property tests: the envelope, classification and callback parsers never
//! panic on arbitrary input, and exact ids survive any size.

use proptest::prelude::*;
use rescind_channel_pandapon::callback::parse_callback;
use rescind_channel_pandapon::{classify, Envelope};

/// JSON-shaped noise: fragments of real envelopes and callbacks, glued at random.
fn jsonish() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\"code\"",
        "\"data\"",
        "\"developId\"",
        "\"msg\"",
        "\"requestId\"",
        "\"messageType\"",
        "\"messageBody\"",
        "\"messagePlatform\"",
        "\"timestamp\"",
        "\"REFUND_STATUS_CHANGE\"",
        "\"ORDER_STATUS_CHANGE\"",
        "\"orderId\"",
        "\"refundId\"",
        "\"refundStatus\"",
        "\"status\"",
        "200",
        "1104",
        "-1",
        "2542285634920880794",
        "99999999999999999999999999",
        "1e308",
        "-0.0",
        "null",
        "true",
        "false",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"成功\"",
        " ",
        "\\",
        "{\\\"orderId\\\":1}",
    ]);
    prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn envelope_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512), status in any::<u16>()) {
        let _ = Envelope::parse(&bytes);
        let _ = classify(status, &bytes);
    }

    #[test]
    fn envelope_parser_never_panics_on_jsonish(s in jsonish(), status in prop::sample::select(vec![200u16, 404, 429, 500, 504])) {
        if let Ok(env) = Envelope::parse(s.as_bytes()) {
            let _ = env.data_as::<serde_json::Value>("x");
            let _ = env.data_as::<rescind_channel_pandapon::CancelRefundData>("x");
            let _ = env.data_as::<rescind_channel_pandapon::OrderDetail>("x");
        }
        let _ = classify(status, s.as_bytes());
    }

    #[test]
    fn callback_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(m) = parse_callback(&bytes) {
            let _ = m.key();
            let _ = m.interpret();
        }
    }

    #[test]
    fn callback_parser_never_panics_on_jsonish(s in jsonish()) {
        if let Ok(m) = parse_callback(s.as_bytes()) {
            let _ = m.key();
            let _ = m.interpret();
        }
    }

    #[test]
    fn ids_and_develop_ids_are_exact_at_any_size(digits in "[1-9][0-9]{0,40}", as_string in any::<bool>()) {
        let v = if as_string { format!("\"{digits}\"") } else { digits.clone() };
        let body = format!(r#"{{"requestId":"r","code":200,"developId":{v},"msg":"ok","data":{{"orderId":{v},"status":"cancel"}}}}"#);
        let env = classify(200, body.as_bytes()).unwrap();
        prop_assert_eq!(env.develop_id.as_deref(), Some(digits.as_str()));
        let d: rescind_channel_pandapon::OrderDetail = env.data_as("x").unwrap();
        prop_assert_eq!(d.order_id.as_deref(), Some(digits.as_str()));
        let cb = format!(r#"{{"messageType":"ORDER_STATUS_CHANGE","messagePlatform":1,"timestamp":1,"messageBody":{{"orderId":{v},"status":"cancel"}}}}"#);
        match parse_callback(cb.as_bytes()).unwrap().interpret().unwrap() {
            rescind_channel_pandapon::callback::CallbackEvent::Order { order, .. } => {
                prop_assert_eq!(order.order_id.as_str(), digits.as_str());
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }
}
