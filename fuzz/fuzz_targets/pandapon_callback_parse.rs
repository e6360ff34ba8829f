//! PandaPon callback payloads: parse, interpret and key any body.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = rescind_channel_pandapon::callback::parse_callback(data) {
        let _ = msg.interpret();
        let _ = msg.key();
    }
});
