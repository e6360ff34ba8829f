//! The on-disk key layout (documented in `docs/journal-format.md`).
//!
//! Everything lives in one sled tree, [`TREE`], so that one group commit is
//! one `sled::Batch`: all-or-nothing after crash recovery. The first byte of a
//! key says what it is; big-endian numbers make byte order equal to numeric
//! order, and uuid bytes make byte order equal to [`SagaId`] order.

use rescind_core::SagaId;

/// The sled tree holding the journal.
pub const TREE: &[u8] = b"rescind_journal";

/// Meta key: the journal format version, a big-endian `u32`.
pub const META_FORMAT_VERSION: &[u8] = b"Mformat_version";

/// Prefix of record keys: `R ++ saga (16) ++ seq (u64 BE)`.
pub const RECORD: u8 = b'R';
/// Prefix of the unfinished index: `U ++ saga (16)` → started `at_ms` (u64 BE).
pub const UNFINISHED: u8 = b'U';
/// Prefix of the finished index: `F ++ saga (16)` → finished `at_ms` (u64 BE).
pub const FINISHED: u8 = b'F';

/// Length of a record key.
pub const RECORD_KEY_LEN: usize = 1 + 16 + 8;
/// Length of an index key.
pub const INDEX_KEY_LEN: usize = 1 + 16;

/// The key of record `seq` of `saga`.
pub fn record(saga: SagaId, seq: u64) -> [u8; RECORD_KEY_LEN] {
    let mut k = [0u8; RECORD_KEY_LEN];
    k[0] = RECORD;
    k[1..17].copy_from_slice(saga.0.as_bytes());
    k[17..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The prefix of every record of `saga`.
pub fn record_prefix(saga: SagaId) -> [u8; INDEX_KEY_LEN] {
    index(RECORD, saga)
}

/// An index key (`UNFINISHED` or `FINISHED`) of `saga`.
pub fn index(kind: u8, saga: SagaId) -> [u8; INDEX_KEY_LEN] {
    let mut k = [0u8; INDEX_KEY_LEN];
    k[0] = kind;
    k[1..].copy_from_slice(saga.0.as_bytes());
    k
}

/// The saga of an index key, if the key is well-formed.
pub fn saga_of_index(key: &[u8]) -> Option<SagaId> {
    if key.len() != INDEX_KEY_LEN {
        return None;
    }
    let bytes: [u8; 16] = key[1..].try_into().ok()?;
    Some(SagaId(uuid::Uuid::from_bytes(bytes)))
}

/// The sequence of a record key, if the key is well-formed.
pub fn seq_of_record(key: &[u8]) -> Option<u64> {
    if key.len() != RECORD_KEY_LEN || key[0] != RECORD {
        return None;
    }
    let bytes: [u8; 8] = key[17..].try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// A big-endian `u64` value, if it is exactly 8 bytes.
pub fn u64_value(v: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = v.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_is_saga_then_seq() {
        let a = SagaId::from_u128(1);
        let b = SagaId::from_u128(2);
        let mut keys = vec![record(b, 0), record(a, 256), record(a, 1), record(a, 0)];
        keys.sort();
        assert_eq!(
            keys,
            vec![record(a, 0), record(a, 1), record(a, 256), record(b, 0)]
        );
        assert_eq!(seq_of_record(&record(a, 256)), Some(256));
        assert_eq!(saga_of_index(&index(UNFINISHED, b)), Some(b));
        assert!(record(a, 7).starts_with(&record_prefix(a)));
        assert!(!record(b, 7).starts_with(&record_prefix(a)));
    }

    #[test]
    fn malformed_keys_and_values_are_none() {
        assert_eq!(seq_of_record(b"R123"), None);
        assert_eq!(saga_of_index(b"U"), None);
        assert_eq!(u64_value(b"1234567"), None);
        assert_eq!(u64_value(&7u64.to_be_bytes()), Some(7));
    }
}
