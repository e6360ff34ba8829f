//! TOP gateway responses: envelope parsing (JSON and XML) and classification,
//! for any status and body. Must never panic; every error is classified.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rescind_channel_top::parse_envelope(data);
    let status = match data.first() {
        Some(b) if b % 4 == 0 => 503,
        Some(b) if b % 4 == 1 => 504,
        _ => 200,
    };
    if let Ok(v) = rescind_channel_top::classify_response(status, data, "tmall.tbc.order.cancel") {
        let _ = rescind_channel_top::check_tbc_result(&v, "tmall.tbc.order.cancel");
    }
});
