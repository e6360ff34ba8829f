//! The two rescind channels PandaPon offers, over one [`PandaponClient`].

use crate::client::{check_echo, PandaponClient};
use crate::status::{order_state, refund_state, Platform};
use async_trait::async_trait;
use rescind_core::{
    CancelOrder, CancelOutcome, CancelRefund, CancelRequest, ChannelError, ChannelName, Conflict,
    ErrorClass, OrderLookup, OrderRef, OrderState, OrderStatus, RefundId, RefundOpened,
    RefundStatus, WithdrawRequest,
};
use std::sync::Arc;

/// The channel name of Taobao orders bought through PandaPon.
pub const TAOBAO_CHANNEL: &str = "pandapon-taobao";
/// The channel name of 1688 orders bought through PandaPon.
pub const ALIBABA_CHANNEL: &str = "pandapon-1688";

/// Taobao orders through PandaPon (`pandapon-taobao`): cancel before payment
/// (assumed path), cancel after payment = reverse-order submission (assumed),
/// refund withdraw (documented), order and reverse-order lookups (assumed).
#[derive(Clone, Debug)]
pub struct PandaponTaobao {
    client: Arc<PandaponClient>,
}

impl PandaponTaobao {
    /// The Taobao channel over `client`.
    pub fn new(client: Arc<PandaponClient>) -> Self {
        PandaponTaobao { client }
    }
    /// The client underneath.
    pub fn client(&self) -> &Arc<PandaponClient> {
        &self.client
    }
}

/// 1688 orders through PandaPon (`pandapon-1688`): cancel before payment
/// (documented), order and refund lookups (assumed). Cancel after payment is
/// not offered by the API: `Permanent(Unsupported)`.
#[derive(Clone, Debug)]
pub struct Pandapon1688 {
    client: Arc<PandaponClient>,
}

impl Pandapon1688 {
    /// The 1688 channel over `client`.
    pub fn new(client: Arc<PandaponClient>) -> Self {
        Pandapon1688 { client }
    }
    /// The client underneath.
    pub fn client(&self) -> &Arc<PandaponClient> {
        &self.client
    }
}

#[async_trait]
impl CancelOrder for PandaponTaobao {
    async fn cancel_unpaid(&self, req: &CancelRequest) -> Result<CancelOutcome, ChannelError> {
        self.client
            .as_account(req.account.as_ref())
            .await?
            .taobao_order_cancel(req.order.order_id.as_str(), req.reason.as_deref())
            .await?;
        Ok(CancelOutcome { already: false })
    }

    async fn cancel_paid(&self, req: &CancelRequest) -> Result<RefundOpened, ChannelError> {
        let order_id = req.order.order_id.as_str();
        match self
            .client
            .as_account(req.account.as_ref())
            .await?
            .taobao_refund_submit(order_id, req.reason.as_deref())
            .await
        {
            Ok(refund_id) => Ok(RefundOpened {
                refund_id: RefundId(refund_id),
            }),
            // 1104: a refund is already open (our own earlier submission whose
            // reply was lost, or the buyer's): resolve by lookup to learn its id.
            Err(e) if e.class == ErrorClass::AlreadyDone => {
                let status = self.order_status(&req.order, req.account.as_ref()).await?;
                match status.state {
                    OrderState::Refunding { refund_id } | OrderState::Refunded { refund_id } => {
                        Ok(RefundOpened { refund_id })
                    }
                    other => Err(ChannelError::conflict(
                        Conflict::Other {
                            detail: format!(
                                "a refund is said to be open, but the order is {other}"
                            ),
                        },
                        format!(
                            "{}; lookup shows {} ({})",
                            e.message, other, status.upstream
                        ),
                    )
                    .with_codes(e.code, None)),
                }
            }
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl CancelRefund for PandaponTaobao {
    async fn withdraw_refund(&self, req: &WithdrawRequest) -> Result<(), ChannelError> {
        let data = self
            .client
            .as_account(req.account.as_ref())
            .await?
            .taobao_refund_cancel(req.refund_id.as_str())
            .await?;
        let echoed = data
            .refund_order_aggregate
            .as_ref()
            .and_then(|a| a.refund_order.as_ref())
            .and_then(|r| r.refund_id.as_deref());
        check_echo("taobao refund cancel", req.refund_id.as_str(), echoed)
    }
}

#[async_trait]
impl OrderLookup for PandaponTaobao {
    async fn order_status(
        &self,
        order: &OrderRef,
        account: Option<&rescind_core::AccountId>,
    ) -> Result<OrderStatus, ChannelError> {
        let d = self
            .client
            .as_account(account)
            .await?
            .taobao_order_detail(order.order_id.as_str())
            .await?;
        detail_status("taobao order detail", order, d, Platform::Taobao)
    }

    async fn refund_status(
        &self,
        _order: &OrderRef,
        refund_id: &RefundId,
        account: Option<&rescind_core::AccountId>,
    ) -> Result<RefundStatus, ChannelError> {
        let r = self
            .client
            .as_account(account)
            .await?
            .taobao_refund_detail(refund_id.as_str())
            .await?;
        check_echo(
            "taobao refund detail",
            refund_id.as_str(),
            r.refund_id.as_deref(),
        )?;
        let word = r.refund_status.unwrap_or_default();
        let state = refund_state(Platform::Taobao, &word, r.seller_refuse_reason)?;
        Ok(RefundStatus {
            state,
            upstream: word,
        })
    }
}

#[async_trait]
impl CancelOrder for Pandapon1688 {
    async fn cancel_unpaid(&self, req: &CancelRequest) -> Result<CancelOutcome, ChannelError> {
        self.client
            .as_account(req.account.as_ref())
            .await?
            .alibaba_order_cancel(
                req.order.order_id.as_str(),
                req.reason.as_deref(),
                req.remark.as_deref(),
            )
            .await?;
        Ok(CancelOutcome { already: false })
    }

    async fn cancel_paid(&self, _req: &CancelRequest) -> Result<RefundOpened, ChannelError> {
        Err(ChannelError::unsupported(
            &ChannelName::from(ALIBABA_CHANNEL),
            "cancel after payment (1688 refunds are opened by the buyer through after-sales)",
        ))
    }
    /// 1688 order ids are sent as exact JSON integers: unsigned 64-bit decimal.
    fn check_order_id(&self, order_id: &str) -> Result<(), String> {
        rescind_core::channel::check_decimal_u64(order_id)
    }
}

#[async_trait]
impl OrderLookup for Pandapon1688 {
    async fn order_status(
        &self,
        order: &OrderRef,
        account: Option<&rescind_core::AccountId>,
    ) -> Result<OrderStatus, ChannelError> {
        let d = self
            .client
            .as_account(account)
            .await?
            .alibaba_order_detail(order.order_id.as_str())
            .await?;
        detail_status("1688 order detail", order, d, Platform::Alibaba)
    }

    async fn refund_status(
        &self,
        order: &OrderRef,
        refund_id: &RefundId,
        account: Option<&rescind_core::AccountId>,
    ) -> Result<RefundStatus, ChannelError> {
        let r = self
            .client
            .as_account(account)
            .await?
            .alibaba_refund_detail(refund_id.as_str())
            .await?;
        check_echo(
            "1688 refund detail",
            refund_id.as_str(),
            r.refund_id.as_deref(),
        )?;
        check_echo(
            "1688 refund detail (order)",
            order.order_id.as_str(),
            r.order_id.as_deref(),
        )?;
        let state = refund_state(Platform::Alibaba, &r.status, None)?;
        Ok(RefundStatus {
            state,
            upstream: r.status,
        })
    }
}

/// An order detail answer as an [`OrderStatus`]: the echoed id must be the one
/// asked for, and the status (with the refund, if any) maps through the table.
fn detail_status(
    what: &str,
    order: &OrderRef,
    d: crate::client::OrderDetail,
    platform: Platform,
) -> Result<OrderStatus, ChannelError> {
    check_echo(what, order.order_id.as_str(), d.order_id.as_deref())?;
    let refund = d
        .refund_id
        .as_deref()
        .map(|id| (id, d.refund_status.as_deref()));
    let state = order_state(platform, &d.status, refund)?;
    Ok(OrderStatus {
        state,
        upstream: d.status,
    })
}
