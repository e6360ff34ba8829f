//! Journal records: any bytes through the decoder. A record that decodes must
//! re-encode and decode to the same entry (nothing journaled is lost).
#![no_main]
use libfuzzer_sys::fuzz_target;
use rescind_core::record::{decode, encode};
use rescind_core::SagaId;

fuzz_target!(|data: &[u8]| {
    let saga = SagaId::from_u128(7);
    if let Ok(entry) = decode(saga, 3, data) {
        let again = decode(saga, 3, &encode(&entry)).expect("a decoded record re-encodes");
        assert_eq!(again, entry);
    }
});
