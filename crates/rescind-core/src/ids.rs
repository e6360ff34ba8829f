//! Identifiers: sagas, channels, orders, refunds and stock locks.
//!
//! Upstream ids are kept as strings end to end: some channels (PandaPon's 1688
//! order ids) exceed 2^53, and a string can never lose digits to `f64`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The identity of one saga (one cancellation or refund withdrawal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SagaId(pub uuid::Uuid);

impl SagaId {
    /// A fresh unique id: a UUID v7, 48 bits of Unix milliseconds then 74
    /// random bits. Ids made later sort after earlier ones, so a new saga's
    /// journal keys (records, index entries) land at the end of their key
    /// range instead of anywhere in it: the sled journal's B-tree then
    /// touches and splits the same few leaves per group commit rather than a
    /// random leaf per key, and PostgreSQL's b-tree on `saga_id` the same.
    pub fn new_random() -> Self {
        SagaId(uuid::Uuid::now_v7())
    }
    /// The id a caller-chosen idempotency key always maps to (UUID v5), so a
    /// start retried after a lost reply finds the saga it already created.
    pub fn from_key(key: &str) -> Self {
        const NS: uuid::Uuid = uuid::Uuid::from_u128(0x7265_7363_696e_6400_0000_0000_0000_0001);
        SagaId(uuid::Uuid::new_v5(&NS, key.as_bytes()))
    }
    /// An id built from 128 bits, for deterministic id generation.
    pub fn from_u128(v: u128) -> Self {
        SagaId(uuid::Uuid::from_u128(v))
    }
}

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for SagaId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SagaId(uuid::Uuid::parse_str(s)?))
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }
    };
}

string_id!(
    /// The name a channel is registered under, e.g. `tmall-tbc`, `damai`,
    /// `pandapon-taobao`, `pandapon-1688`.
    ChannelName
);
string_id!(
    /// An order id as the channel spells it (never parsed as a number).
    OrderId
);
string_id!(
    /// A refund (reverse order) id as the channel spells it.
    RefundId
);
string_id!(
    /// The id of a stock lock (Damai: the order id whose tickets are locked).
    StockLockId
);
string_id!(
    /// The kind of a saga definition, e.g. `cancel_unpaid`.
    SagaKind
);
string_id!(
    /// The account (shop, seller) a saga acts for on its channel, e.g. a
    /// Taobao seller nick. Channels resolve its credentials (a TOP session, a
    /// PandaPon access key, a Damai supplier key) at call time.
    AccountId
);

/// An order on one channel.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OrderRef {
    /// The channel the order lives on.
    pub channel: ChannelName,
    /// The channel's order id.
    pub order_id: OrderId,
}

impl OrderRef {
    /// Build an order reference.
    pub fn new(channel: impl Into<ChannelName>, order_id: impl Into<OrderId>) -> Self {
        OrderRef {
            channel: channel.into(),
            order_id: order_id.into(),
        }
    }
}

impl fmt::Display for OrderRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.channel, self.order_id)
    }
}

/// A stock lock held on a channel (Damai ticket stock), released after a cancel.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StockLockRef {
    /// The channel holding the lock.
    pub channel: ChannelName,
    /// The lock's id on that channel.
    pub lock_id: StockLockId,
}

impl StockLockRef {
    /// Build a stock lock reference.
    pub fn new(channel: impl Into<ChannelName>, lock_id: impl Into<StockLockId>) -> Self {
        StockLockRef {
            channel: channel.into(),
            lock_id: lock_id.into(),
        }
    }
}

/// Kind name of the unpaid-cancel saga.
pub const CANCEL_UNPAID: &str = "cancel_unpaid";
/// Kind name of the paid-cancel saga.
pub const CANCEL_PAID: &str = "cancel_paid";
/// Kind name of the refund-withdraw saga.
pub const WITHDRAW_REFUND: &str = "withdraw_refund";

#[cfg(test)]
mod tests {
    use super::SagaId;

    #[test]
    fn new_ids_are_unique_and_sort_by_creation_time() {
        let a = SagaId::new_random();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b: Vec<SagaId> = (0..1000).map(|_| SagaId::new_random()).collect();
        assert!(b.iter().all(|id| *id > a), "an id made later sorted first");
        let mut unique = b.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), b.len());
        assert_eq!(a.0.get_version_num(), 7);
    }
}
