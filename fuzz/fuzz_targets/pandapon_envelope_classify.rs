//! PandaPon responses: `{requestId, code, developId, msg, data}` envelope and
//! classification for any status and body.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rescind_channel_pandapon::envelope::Envelope::parse(data);
    let status = match data.first() {
        Some(b) if b % 3 == 0 => 500,
        Some(b) if b % 3 == 1 => 429,
        _ => 200,
    };
    let _ = rescind_channel_pandapon::classify(status, data);
});
