//! The on-disk key layout (documented in `docs/journal-format.md`).
//!
//! Everything lives in one sled tree, [`TREE`], so that one group commit is
//! one `sled::Batch`: all-or-nothing after crash recovery. The first byte of a
//! key says what it is; big-endian numbers make byte order equal to numeric
//! order, and uuid bytes make byte order equal to [`SagaId`] order.

use rescind_core::{SagaId, SagaIndexEntry, SagaStatus};

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

/// The saga index entry: `I ++ saga (16)` → [`SagaIndexEntry::encode`].
/// The secondary index keys below all end in the saga's 16 bytes and have
/// empty values, so a prefix scan yields sagas in id order.
pub const ENTRY: u8 = b'I';
/// By state: `S ++ state code (1) ++ saga (16)` ([`SagaStatus::code`]).
pub const BY_STATE: u8 = b'S';
/// By order: `O ++ str(channel) ++ str(order id) ++ saga (16)`.
pub const BY_ORDER: u8 = b'O';
/// By account: `A ++ str(account) ++ saga (16)` (sagas that name one).
pub const BY_ACCOUNT: u8 = b'A';
/// By channel: `C ++ str(channel) ++ saga (16)`.
pub const BY_CHANNEL: u8 = b'C';
/// By kind (as started): `K ++ str(kind) ++ saga (16)`.
pub const BY_KIND: u8 = b'K';
/// By last update: `T ++ updated_at_ms (u64 BE) ++ saga (16)`.
pub const BY_TIME: u8 = b'T';

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

/// `str(s)`: the string's length (u32 BE) then its bytes, so that one
/// string's key prefix never matches another string's.
fn push_str(k: &mut Vec<u8>, s: &str) {
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(s.as_bytes());
}

/// The prefix of the sagas of `channel`'s order `order_id` in [`BY_ORDER`].
pub fn order_prefix(channel: &str, order_id: &str) -> Vec<u8> {
    let mut k = vec![BY_ORDER];
    push_str(&mut k, channel);
    push_str(&mut k, order_id);
    k
}

/// The prefix of the sagas whose `kind` ([`BY_ACCOUNT`], [`BY_CHANNEL`] or
/// [`BY_KIND`]) field is `value`.
pub fn str_prefix(kind: u8, value: &str) -> Vec<u8> {
    let mut k = vec![kind];
    push_str(&mut k, value);
    k
}

/// The prefix of the sagas in `state` in [`BY_STATE`].
pub fn state_prefix(state: SagaStatus) -> [u8; 2] {
    [BY_STATE, state.code()]
}

/// The key of the time index at `at_ms` (with `saga`'s bytes after it).
pub fn time_key(at_ms: u64, saga: SagaId) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 8 + 16);
    k.push(BY_TIME);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(saga.0.as_bytes());
    k
}

/// Every secondary index key of `saga` with entry `e` (not the entry key).
pub fn secondary(saga: SagaId, e: &SagaIndexEntry) -> Vec<Vec<u8>> {
    let id = saga.0.as_bytes();
    let with_id = |mut k: Vec<u8>| {
        k.extend_from_slice(id);
        k
    };
    let mut out = vec![
        with_id(state_prefix(e.state).to_vec()),
        with_id(order_prefix(&e.channel, &e.order_id)),
        with_id(str_prefix(BY_CHANNEL, &e.channel)),
        with_id(str_prefix(BY_KIND, &e.kind)),
        time_key(e.updated_at_ms, saga),
    ];
    if let Some(a) = &e.account {
        out.push(with_id(str_prefix(BY_ACCOUNT, a)));
    }
    out
}

/// The saga named by the last 16 bytes of an index key, if it has them.
pub fn saga_of_tail(key: &[u8]) -> Option<SagaId> {
    let start = key.len().checked_sub(16)?;
    let bytes: [u8; 16] = key[start..].try_into().ok()?;
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
