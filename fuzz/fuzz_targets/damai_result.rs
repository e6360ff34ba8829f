//! Damai cancel-lock-stock results: any JSON value through the result check.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = rescind_channel_top::check_damai_result(
            &v,
            "alibaba.damai.yuntoc.order.cancellockstock",
        );
    }
    if let Ok(v) = rescind_channel_top::classify_response(
        200,
        data,
        "alibaba.damai.yuntoc.order.cancellockstock",
    ) {
        let _ = rescind_channel_top::check_damai_result(&v, "alibaba.damai.yuntoc.order.cancellockstock");
    }
});
