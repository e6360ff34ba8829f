//! Every input committed under `fuzz/regressions/journal_record_decode/`
//! (inputs the fuzz target once failed on, or that an issue reported) runs
//! the target's property on stable in the normal test suite: decoding gives a
//! typed result, and a record that decodes re-encodes, in either encoding, to
//! exactly the same entry.

use rescind_core::record::{decode, encode, encode_json};
use rescind_core::{JournalError, SagaId};
use std::path::Path;

#[test]
fn journal_record_decode_regressions_hold() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/journal_record_decode");
    let mut n = 0;
    for file in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = file.expect("dir entry").path();
        let data = std::fs::read(&path).expect("read regression input");
        let saga = SagaId::from_u128(7);
        match decode(saga, 3, &data) {
            Ok(entry) => {
                let again = decode(saga, 3, &encode(&entry))
                    .unwrap_or_else(|e| panic!("{}: binary re-encode: {e}", path.display()));
                assert_eq!(again, entry, "{}: binary round trip", path.display());
                let json = decode(saga, 3, &encode_json(&entry))
                    .unwrap_or_else(|e| panic!("{}: JSON re-encode: {e}", path.display()));
                assert_eq!(json, entry, "{}: JSON round trip", path.display());
            }
            Err(JournalError::Corrupt { .. } | JournalError::UnsupportedVersion { .. }) => {}
            Err(other) => panic!("{}: unexpected error kind {other}", path.display()),
        }
        n += 1;
    }
    assert!(n >= 1, "no regression inputs in {}", dir.display());
}
