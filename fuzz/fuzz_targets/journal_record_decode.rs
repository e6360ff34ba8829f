//! Journal records: any bytes through the decoder (binary format 2 or JSON
//! format 1, told apart by the first byte). A record that decodes must
//! re-encode, in either encoding, and decode to exactly the same entry
//! (nothing journaled is lost or changed, floats included).
#![no_main]
use libfuzzer_sys::fuzz_target;
use rescind_core::record::{decode, encode, encode_json};
use rescind_core::SagaId;

fuzz_target!(|data: &[u8]| {
    let saga = SagaId::from_u128(7);
    if let Ok(entry) = decode(saga, 3, data) {
        let again = decode(saga, 3, &encode(&entry)).expect("a decoded record re-encodes");
        assert_eq!(again, entry, "binary round trip");
        let json = decode(saga, 3, &encode_json(&entry)).expect("a decoded record re-encodes as JSON");
        assert_eq!(json, entry, "JSON round trip");
    }
});
