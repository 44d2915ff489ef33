//! Everything about talking ENS's language: notification signing (shared by the receiver and the
//! emulator), the wire types, and the REST client with its token cache.

pub mod auth;
pub mod client;
pub mod error;
pub mod signing;
pub mod wire;

pub use auth::{ClientSecret, Credentials};
pub use client::{ClientConfig, EnsClient};
pub use error::EnsError;
pub use wire::{
    Callback, CallbackUpdate, Created, CreatedCallback, Deleted, NewCallback, NewSubscription,
    Subscription, SubscriptionState, SubscriptionUpdate, Updated,
};
