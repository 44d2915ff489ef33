//! Everything about talking ENS's language: notification signing (shared by the receiver and the
//! emulator), the wire types, and the REST client with its token cache.

pub mod auth;
pub mod client;
pub mod endpoint;
pub mod error;
pub mod signing;
pub mod wire;

pub use auth::{ClientSecret, Credentials, TenantKey};
pub use client::{CallObserver, ClientConfig, EnsClient};
pub use endpoint::{EndpointPolicy, HostPattern};
pub use error::EnsError;
pub use wire::{
    Callback, CallbackUpdate, Created, CreatedCallback, Deleted, NewCallback, NewSubscription,
    Subscription, SubscriptionState, SubscriptionUpdate, Updated,
};

/// Every documented `eventCategoryType` (`docs/ens-protocol.md` §5.4).
pub const EVENT_TYPES: &[&str] = &[
    "TransactionalSendEvents.EmailSent",
    "TransactionalSendEvents.EmailNotSent",
    "TransactionalSendEvents.EmailBounced",
    "EngagementEvents.EmailOpen",
    "EngagementEvents.EmailClick",
    "EngagementEvents.EmailUnsubscribe",
    "TransactionalSendEvents.SmsSent",
    "TransactionalSendEvents.SmsNotSent",
    "TransactionalSendEvents.SmsTransient",
    "TransactionalSendEvents.SmsDelivered",
    "TransactionalSendEvents.SmsBounced",
    "TransactionalSendEvents.OttNotSent",
    "EngagementEvents.OttMobileOriginated",
    "EngagementEvents.OttSent",
    "EngagementEvents.OttDelivered",
    "EngagementEvents.OttRead",
    "EngagementEvents.OttFailed",
    "SendEvents.AutomationInstanceStarted",
    "SendEvents.AutomationInstanceCompleted",
    "SendEvents.AutomationInstanceStopped",
    "SendEvents.AutomationInstanceErrored",
    "SendEvents.AutomationInstanceSkipped",
    "SendEvents.PushSent",
    "SendEvents.PushNotSent",
    "SendEvents.PushBounced",
    "EngagementEvents.PushOpen",
    "EngagementEvents.InAppDisplay",
    "EngagementEvents.InAppDismiss",
    "EngagementEvents.InAppClick",
    "EngagementEvents.InboxOpen",
    "EngagementEvents.PushDeliveryReceipt",
    "EngagementEvents.PushInstall",
    "EngagementEvents.PushInactive",
    "EngagementEvents.PushImageClick",
    "EngagementEvents.PushButtonClick",
];
