//! A scripted in-memory upstream for the core's own tests: it implements every
//! channel trait over a tiny order book, counts applied effects, and plays a
//! script of faults. (Tests of real channels use the HTTP simulator instead.)
#![allow(dead_code)]

use async_trait::async_trait;
use rescind_core::*;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One scripted behaviour for the next mutating call.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Behave normally.
    Pass,
    /// Fail before applying anything.
    Err(ChannelError),
    /// Apply the effect, then lose the reply (in doubt).
    Lose,
    /// The buyer pays just before this call is handled.
    PayFirst,
    /// Apply the effect, then "crash the process" (the journal dies).
    CrashAfterApply,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UOrder {
    pub state: OrderState,
    pub refund: Option<(RefundId, RefundState)>,
    pub shipped: bool,
}

#[derive(Default)]
pub struct Book {
    pub orders: HashMap<String, UOrder>,
    pub locks: HashMap<String, bool>,
    pub effects: Vec<String>,
    pub script: VecDeque<Fault>,
    pub refund_seq: u32,
    /// Refund lookups that answer "still open" before the refund completes.
    pub refund_polls_before_complete: u32,
    pub polls: HashMap<String, u32>,
    /// Refunds never complete by themselves (abort tests).
    pub refunds_never_complete: bool,
    pub journal_to_crash: Option<MemoryJournal>,
    pub calls: u64,
    /// Refunds opened by a paid cancel: only these complete by themselves
    /// (as a seller would agree); a buyer's pre-existing refund does not.
    pub opened: std::collections::HashSet<String>,
    /// `call account` for every call that named an account.
    pub accounts: Vec<String>,
}

#[derive(Clone, Default)]
pub struct Upstream {
    pub book: Arc<Mutex<Book>>,
}

impl Upstream {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn order(&self, id: &str, state: OrderState) -> &Self {
        let refund = match &state {
            OrderState::Refunding { refund_id } => {
                Some((refund_id.clone(), RefundState::Requested))
            }
            _ => None,
        };
        self.book.lock().unwrap().orders.insert(
            id.into(),
            UOrder {
                state,
                refund,
                shipped: false,
            },
        );
        self
    }
    pub fn lock(&self, id: &str) -> &Self {
        self.book.lock().unwrap().locks.insert(id.into(), false);
        self
    }
    pub fn ship(&self, id: &str) {
        if let Some(o) = self.book.lock().unwrap().orders.get_mut(id) {
            o.shipped = true;
        }
    }
    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.book.lock().unwrap().script.extend(faults);
    }
    /// Record the account a call named, if any.
    fn saw(&self, call: &str, account: Option<&rescind_core::AccountId>) {
        if let Some(a) = account {
            self.book
                .lock()
                .unwrap()
                .accounts
                .push(format!("{call} {a}"));
        }
    }
    pub fn accounts_seen(&self) -> Vec<String> {
        self.book.lock().unwrap().accounts.clone()
    }
    pub fn effects(&self) -> Vec<String> {
        self.book.lock().unwrap().effects.clone()
    }
    pub fn effect_counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for e in self.effects() {
            *m.entry(e).or_insert(0) += 1;
        }
        m
    }
    pub fn state(&self, id: &str) -> Option<UOrder> {
        self.book.lock().unwrap().orders.get(id).cloned()
    }
    pub fn lock_released(&self, id: &str) -> Option<bool> {
        self.book.lock().unwrap().locks.get(id).copied()
    }
    pub fn crash_journal_after_apply(&self, j: MemoryJournal) {
        self.book.lock().unwrap().journal_to_crash = Some(j);
    }
    pub fn channels(&self, name: &str) -> Channels {
        let me: Arc<Upstream> = Arc::new(self.clone());
        Channels::new()
            .with_cancel(name, me.clone())
            .with_refund(name, me.clone())
            .with_lookup(name, me.clone())
            .with_stock("damai", me)
    }

    /// Take the next scripted fault. Returns Err for pre-apply failures and
    /// whether the reply must be lost after applying.
    fn begin(&self, order_id: Option<&str>) -> Result<(bool, bool), ChannelError> {
        let mut b = self.book.lock().unwrap();
        b.calls += 1;
        match b.script.pop_front() {
            None | Some(Fault::Pass) => Ok((false, false)),
            Some(Fault::Err(e)) => Err(e),
            Some(Fault::Lose) => Ok((true, false)),
            Some(Fault::CrashAfterApply) => Ok((true, true)),
            Some(Fault::PayFirst) => {
                if let Some(o) = order_id.and_then(|id| b.orders.get_mut(id)) {
                    if o.state == OrderState::PendingPay {
                        o.state = OrderState::Paid;
                    }
                }
                Ok((false, false))
            }
        }
    }

    fn finish<T>(&self, lose: bool, crash: bool, v: T) -> Result<T, ChannelError> {
        if crash {
            if let Some(j) = self.book.lock().unwrap().journal_to_crash.take() {
                j.crash_now();
            }
        }
        if lose || crash {
            Err(ChannelError::in_doubt("reply lost"))
        } else {
            Ok(v)
        }
    }
}

fn not_found(what: &str) -> ChannelError {
    ChannelError::permanent(PermanentReason::NotFound, format!("{what} not found"))
        .with_codes(Some("404".into()), None)
}

#[async_trait]
impl CancelOrder for Upstream {
    async fn cancel_unpaid(&self, req: &CancelRequest) -> Result<CancelOutcome, ChannelError> {
        let id = req.order.order_id.as_str();
        self.saw("cancel_unpaid", req.account.as_ref());
        let (lose, crash) = self.begin(Some(id))?;
        {
            let mut b = self.book.lock().unwrap();
            let o = b.orders.get_mut(id).ok_or_else(|| not_found("order"))?;
            match o.state {
                OrderState::PendingPay => o.state = OrderState::Cancelled,
                OrderState::Cancelled => {
                    return Err(ChannelError::new(
                        ErrorClass::AlreadyDone,
                        "already cancelled",
                    ))
                }
                OrderState::Paid => {
                    return Err(ChannelError::conflict(
                        Conflict::PaidMeanwhile,
                        "order paid",
                    ))
                }
                _ => {
                    return Err(ChannelError::conflict(
                        Conflict::Other {
                            detail: "bad state".into(),
                        },
                        "bad state",
                    ))
                }
            }
            b.effects.push(format!("cancel_unpaid:{id}"));
        }
        self.finish(lose, crash, CancelOutcome { already: false })
    }

    async fn cancel_paid(&self, req: &CancelRequest) -> Result<RefundOpened, ChannelError> {
        let id = req.order.order_id.as_str();
        let (lose, crash) = self.begin(Some(id))?;
        let refund_id = {
            let mut b = self.book.lock().unwrap();
            b.refund_seq += 1;
            let rid = RefundId(format!("R{}", b.refund_seq));
            let o = b.orders.get_mut(id).ok_or_else(|| not_found("order"))?;
            if o.shipped {
                return Err(ChannelError::conflict(Conflict::AlreadyShipped, "shipped")
                    .with_codes(Some("ORDER_SHIPPED".into()), None));
            }
            match &o.state {
                OrderState::Paid => {
                    o.state = OrderState::Refunding {
                        refund_id: rid.clone(),
                    };
                    o.refund = Some((rid.clone(), RefundState::Requested));
                }
                OrderState::Refunding { .. } => {
                    return Err(ChannelError::new(
                        ErrorClass::AlreadyDone,
                        "refund already open",
                    ))
                }
                _ => {
                    return Err(ChannelError::conflict(
                        Conflict::Other {
                            detail: "not paid".into(),
                        },
                        "not paid",
                    ))
                }
            }
            b.effects.push(format!("cancel_paid:{id}"));
            b.opened.insert(rid.0.clone());
            rid
        };
        self.finish(lose, crash, RefundOpened { refund_id })
    }
}

#[async_trait]
impl CancelRefund for Upstream {
    async fn withdraw_refund(&self, req: &WithdrawRequest) -> Result<(), ChannelError> {
        let id = req.order.order_id.as_str();
        let (lose, crash) = self.begin(Some(id))?;
        {
            let mut b = self.book.lock().unwrap();
            let o = b.orders.get_mut(id).ok_or_else(|| not_found("order"))?;
            match o.refund.clone() {
                Some((rid, RefundState::Requested)) if rid == req.refund_id => {
                    o.refund = Some((rid, RefundState::Withdrawn));
                    o.state = OrderState::Paid;
                }
                Some((rid, RefundState::Withdrawn)) if rid == req.refund_id => {
                    return Err(ChannelError::new(
                        ErrorClass::AlreadyDone,
                        "already withdrawn",
                    ))
                }
                Some((rid, RefundState::Completed)) if rid == req.refund_id => {
                    return Err(ChannelError::conflict(
                        Conflict::RefundAlreadyCompleted,
                        "completed",
                    ))
                }
                _ => return Err(not_found("refund")),
            }
            b.effects.push(format!("withdraw_refund:{}", req.refund_id));
        }
        self.finish(lose, crash, ())
    }
}

#[async_trait]
impl ReleaseStock for Upstream {
    async fn release_stock(
        &self,
        lock: &StockLockRef,
        account: Option<&rescind_core::AccountId>,
    ) -> Result<(), ChannelError> {
        self.saw("release_stock", account);
        let (lose, crash) = self.begin(None)?;
        {
            let mut b = self.book.lock().unwrap();
            let released = b
                .locks
                .get_mut(lock.lock_id.as_str())
                .ok_or_else(|| not_found("lock"))?;
            if *released {
                return Err(ChannelError::new(
                    ErrorClass::AlreadyDone,
                    "already released",
                ));
            }
            *released = true;
            b.effects.push(format!("release_stock:{}", lock.lock_id));
        }
        self.finish(lose, crash, ())
    }
}

#[async_trait]
impl OrderLookup for Upstream {
    async fn order_status(
        &self,
        order: &OrderRef,
        _account: Option<&rescind_core::AccountId>,
    ) -> Result<OrderStatus, ChannelError> {
        let b = self.book.lock().unwrap();
        let o = b
            .orders
            .get(order.order_id.as_str())
            .ok_or_else(|| not_found("order"))?;
        Ok(OrderStatus {
            state: o.state.clone(),
            upstream: o.state.name().to_string(),
        })
    }
    async fn refund_status(
        &self,
        order: &OrderRef,
        refund_id: &RefundId,
        _account: Option<&rescind_core::AccountId>,
    ) -> Result<RefundStatus, ChannelError> {
        let mut b = self.book.lock().unwrap();
        let never = b.refunds_never_complete || !b.opened.contains(&refund_id.0);
        let need = b.refund_polls_before_complete;
        let polls = {
            let p = b.polls.entry(refund_id.0.clone()).or_insert(0);
            *p += 1;
            *p
        };
        let o = b
            .orders
            .get_mut(order.order_id.as_str())
            .ok_or_else(|| not_found("order"))?;
        match o.refund.clone() {
            Some((rid, RefundState::Requested)) if &rid == refund_id => {
                if !never && polls > need {
                    o.refund = Some((rid.clone(), RefundState::Completed));
                    o.state = OrderState::Refunded { refund_id: rid };
                    Ok(RefundStatus {
                        state: RefundState::Completed,
                        upstream: "SUCCESS".into(),
                    })
                } else {
                    Ok(RefundStatus {
                        state: RefundState::Requested,
                        upstream: "WAIT_SELLER_AGREE".into(),
                    })
                }
            }
            Some((rid, st)) if &rid == refund_id => Ok(RefundStatus {
                upstream: st.name().into(),
                state: st,
            }),
            _ => Err(not_found("refund")),
        }
    }
}

pub fn fast_limits() -> Limits {
    Limits {
        backoff_initial_ms: 100,
        backoff_max_ms: 2_000,
        refund_poll_initial_ms: 1_000,
        refund_poll_max_ms: 10_000,
        attempts_max: 8,
        ..Limits::default()
    }
}

pub fn engine_on(journal: &MemoryJournal, up: &Upstream, seed: u64) -> Engine {
    Engine::builder(Arc::new(journal.clone()))
        .channels(up.channels("tbc"))
        .clock(Arc::new(TokioClock::with_base(1_700_000_000_000)))
        .rng(Arc::new(SplitMix64::new(seed)))
        .ids(Arc::new(SeededIds::new(seed)))
        .limits(fast_limits())
        .build()
}

pub fn order(id: &str) -> OrderRef {
    OrderRef::new("tbc", id)
}

pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}
