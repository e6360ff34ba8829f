//! Arbitrary bytes never panic the envelope parsers or the classifiers, and
//! whatever they say about garbage is an error, never success.

use proptest::prelude::*;
use rescind_channel_top::{
    check_damai_result, check_tbc_result, classify_response, parse_envelope, TbcOrder,
};

const METHOD: &str = "tmall.tbc.order.cancel";

/// Bytes shaped like envelopes often enough to reach deep into the parsers.
fn envelope_like() -> impl Strategy<Value = Vec<u8>> {
    let atoms = prop::sample::select(vec![
        "<",
        ">",
        "</",
        "/>",
        "<?xml version=\"1.0\"?>",
        "<![CDATA[",
        "]]>",
        "&amp;",
        "&#x0;",
        "&bogus;",
        "error_response",
        "tmall_tbc_order_cancel_response",
        "result",
        "success",
        "true",
        "false",
        "code",
        "sub_code",
        "isp.x",
        "isv.y",
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"",
        "\\u0000",
        "7",
        "-1",
        "1e999",
        "This ban will last for 18446744073709551616 more seconds",
        "null",
        "\u{FEFF}",
        " ",
    ]);
    prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat().into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512), status in any::<u16>()) {
        let _ = parse_envelope(&body);
        let r = classify_response(status, &body, METHOD);
        if status != 200 {
            prop_assert!(r.is_err());
        }
    }

    #[test]
    fn envelope_like_bytes_never_panic_nor_succeed_by_accident(body in envelope_like()) {
        let _ = parse_envelope(&body);
        if let Ok(v) = classify_response(200, &body, METHOD) {
            // Only a well-formed `<method>_response` gets here; the business
            // check must still refuse anything without `success: true`.
            if let Ok(result) = check_tbc_result(&v, METHOD) {
                let ok = result.get("success").map(|s| s == true || s == "true").unwrap_or(false);
                prop_assert!(ok, "{v}");
            }
            let _ = check_damai_result(&v, METHOD);
            let _ = TbcOrder::from_result(&v, METHOD).and_then(|o| o.state());
        }
    }

    #[test]
    fn arbitrary_json_values_never_panic(v in arb_json()) {
        let body = serde_json::json!({ "tmall_tbc_order_cancel_response": v }).to_string();
        if let Ok(value) = classify_response(200, body.as_bytes(), METHOD) {
            let _ = check_tbc_result(&value, METHOD);
            let _ = check_damai_result(&value, METHOD);
            if let Some(r) = value.get("result") {
                let _ = TbcOrder::from_result(r, METHOD).and_then(|o| o.state());
            }
        }
    }
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(vec![
            "true",
            "false",
            "",
            "WAIT_BUYER_PAY",
            "TRADE_CLOSED",
            "SUCCESS",
            "R1",
            "0",
            "1001",
            "ORDER_PAID",
            "FOO"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        let keys = prop::sample::select(vec![
            "result",
            "success",
            "error_code",
            "order",
            "status",
            "refund_id",
            "refund_status",
            "head",
            "return_code",
            "out_order_no",
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((keys, inner), 0..5).prop_map(|kv| Value::Object(
                kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
            )),
        ]
    })
}
