//! Workloads: which sagas a run starts, on which orders, in which upstream
//! state, and the races the world schedules around them.

use rescind_core::{OrderRef, RefundId, SagaId, SagaInput, StockLockRef};
use rescind_sim::{OrderSeed, RefundSeed};

/// The kinds of saga story a workload draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Story {
    /// TBC order unpaid, cancel before payment (optionally a Damai lock).
    TbcCancelUnpaid,
    /// TBC order paid, cancel after payment (optionally a Damai lock).
    TbcCancelPaid,
    /// TBC order the backend thinks unpaid, already paid upstream.
    TbcPaidMeanwhile,
    /// TBC order already shipped: the cancel meets a conflict.
    TbcShipped,
    /// PandaPon Taobao unpaid cancel.
    TaobaoCancelUnpaid,
    /// PandaPon Taobao paid cancel (reverse order).
    TaobaoCancelPaid,
    /// PandaPon Taobao order the backend thinks unpaid, already paid upstream.
    TaobaoPaidMeanwhile,
    /// PandaPon Taobao refund withdraw.
    TaobaoWithdrawRefund,
    /// PandaPon 1688 unpaid cancel.
    AlibabaCancelUnpaid,
    /// PandaPon 1688 paid cancel: the channel does not offer it (fails permanently).
    AlibabaCancelPaid,
}

impl Story {
    /// Every story.
    pub const ALL: [Story; 10] = [
        Story::TbcCancelUnpaid,
        Story::TbcCancelPaid,
        Story::TbcPaidMeanwhile,
        Story::TbcShipped,
        Story::TaobaoCancelUnpaid,
        Story::TaobaoCancelPaid,
        Story::TaobaoPaidMeanwhile,
        Story::TaobaoWithdrawRefund,
        Story::AlibabaCancelUnpaid,
        Story::AlibabaCancelPaid,
    ];

    /// Relative weight in a swarm workload.
    pub fn weight(&self) -> u64 {
        match self {
            Story::TbcShipped | Story::AlibabaCancelPaid => 1,
            Story::TbcPaidMeanwhile | Story::TaobaoPaidMeanwhile => 2,
            _ => 4,
        }
    }

    /// Whether the story may end up waiting for a refund to complete.
    pub fn awaits_refund(&self) -> bool {
        !matches!(
            self,
            Story::TaobaoWithdrawRefund | Story::TbcShipped | Story::AlibabaCancelPaid
        )
    }

    /// Whether the story starts from an unpaid order (the buyer may pay meanwhile).
    pub fn starts_unpaid(&self) -> bool {
        matches!(
            self,
            Story::TbcCancelUnpaid | Story::TaobaoCancelUnpaid | Story::AlibabaCancelUnpaid
        )
    }
}

/// One saga of a workload, with the upstream order it works on.
#[derive(Clone, Debug)]
pub struct SagaPlan {
    /// Idempotency key (the client re-submits under it after a crash).
    pub key: String,
    /// The story.
    pub story: Story,
    /// Channel of the order.
    pub channel: String,
    /// Order id.
    pub order_id: String,
    /// The saga's input.
    pub input: SagaInput,
    /// Upstream rows to load (the order, and a Damai lock order).
    pub seeds: Vec<OrderSeed>,
    /// When the client submits it, ms after the world began.
    pub start_at_ms: u64,
}

impl SagaPlan {
    /// The saga's id (derived from its key).
    pub fn id(&self) -> SagaId {
        SagaId::from_key(&self.key)
    }

    /// Whether an effect-log target (`channel:id`) concerns this saga.
    pub fn owns_target(&self, target: &str) -> bool {
        self.seeds
            .iter()
            .any(|s| target == format!("{}:{}", s.channel, s.order_id))
            || self.seeds.iter().any(|s| {
                s.refund
                    .as_ref()
                    .is_some_and(|r| target == format!("{}:{}", s.channel, r.refund_id))
            })
    }

    /// Build the plan of story `story` as saga number `i` of run `tag`.
    pub fn new(tag: &str, i: usize, story: Story, with_lock: bool, start_at_ms: u64) -> SagaPlan {
        let tbc = |status: &str| OrderSeed {
            channel: "tmall-tbc".into(),
            order_id: format!("T{i}"),
            status: status.into(),
            refund: None,
            stock_lock: None,
        };
        let taobao_id = format!("{}", 3_100_000_000_000_000_000u64 + i as u64);
        let taobao = |status: &str| OrderSeed {
            channel: "pandapon-taobao".into(),
            order_id: taobao_id.clone(),
            status: status.into(),
            refund: None,
            stock_lock: None,
        };
        let alibaba = |status: &str| OrderSeed {
            channel: "pandapon-1688".into(),
            order_id: format!("{}", 2_542_285_634_920_880_000u64 + i as u64),
            status: status.into(),
            refund: None,
            stock_lock: None,
        };
        let (order, input) = match story {
            Story::TbcCancelUnpaid => {
                let o = tbc("WAIT_BUYER_PAY");
                let r = OrderRef::new("tmall-tbc", o.order_id.clone());
                (o, SagaInput::cancel_unpaid(r))
            }
            Story::TbcPaidMeanwhile => {
                let o = tbc("WAIT_SELLER_SEND_GOODS");
                let r = OrderRef::new("tmall-tbc", o.order_id.clone());
                (o, SagaInput::cancel_unpaid(r))
            }
            Story::TbcCancelPaid => {
                let o = tbc("WAIT_SELLER_SEND_GOODS");
                let r = OrderRef::new("tmall-tbc", o.order_id.clone());
                (o, SagaInput::cancel_paid(r))
            }
            Story::TbcShipped => {
                let o = tbc("WAIT_BUYER_CONFIRM_GOODS");
                let r = OrderRef::new("tmall-tbc", o.order_id.clone());
                (o, SagaInput::cancel_paid(r))
            }
            Story::TaobaoCancelUnpaid => {
                let o = taobao("WAIT_BUYER_PAY");
                let r = OrderRef::new("pandapon-taobao", o.order_id.clone());
                (o, SagaInput::cancel_unpaid(r))
            }
            Story::TaobaoPaidMeanwhile => {
                let o = taobao("WAIT_SELLER_SEND_GOODS");
                let r = OrderRef::new("pandapon-taobao", o.order_id.clone());
                (o, SagaInput::cancel_unpaid(r))
            }
            Story::TaobaoCancelPaid => {
                let o = taobao("WAIT_SELLER_SEND_GOODS");
                let r = OrderRef::new("pandapon-taobao", o.order_id.clone());
                (o, SagaInput::cancel_paid(r))
            }
            Story::TaobaoWithdrawRefund => {
                let mut o = taobao("WAIT_SELLER_SEND_GOODS");
                let rid = format!("RW{i:06}");
                o.refund = Some(RefundSeed {
                    refund_id: rid.clone(),
                    status: "WAIT_SELLER_AGREE".into(),
                });
                let r = OrderRef::new("pandapon-taobao", o.order_id.clone());
                (o, SagaInput::withdraw_refund(r, RefundId(rid)))
            }
            Story::AlibabaCancelUnpaid => {
                let o = alibaba("waitbuyerpay");
                let r = OrderRef::new("pandapon-1688", o.order_id.clone());
                (o, SagaInput::cancel_unpaid(r))
            }
            Story::AlibabaCancelPaid => {
                let o = alibaba("waitsellersend");
                let r = OrderRef::new("pandapon-1688", o.order_id.clone());
                (o, SagaInput::cancel_paid(r))
            }
        };
        let mut seeds = vec![order.clone()];
        let mut input = input.with_reason("buyer asked");
        let tbc_story = order.channel == "tmall-tbc" && story != Story::TbcShipped;
        if with_lock && tbc_story {
            let lock_id = format!("D{i}");
            let paid = order.status != "WAIT_BUYER_PAY";
            seeds.push(OrderSeed {
                channel: "damai".into(),
                order_id: lock_id.clone(),
                status: if paid { "PAID" } else { "WAIT_PAY" }.into(),
                refund: None,
                stock_lock: Some(lock_id.clone()),
            });
            input = input.with_stock_lock(StockLockRef::new("damai", lock_id));
        }
        SagaPlan {
            key: format!("{tag}-{i}"),
            story,
            channel: order.channel,
            order_id: order.order_id,
            input,
            seeds,
            start_at_ms,
        }
    }
}
