//! ens-operator: manages Salesforce Marketing Cloud Event Notification Service (ENS) callbacks
//! and subscriptions from Kubernetes, and ships the receiver that serves the callback URL.
//!
//! Modules follow the architecture (`docs/design.md` §1): `api` (resource types), `crd`
//! (generated manifests), `ens` (ENS protocol), and one module per binary role (`emulator`: a local ENS).

// No `unwrap` outside tests (clippy.toml lets unit tests unwrap; integration tests and benches
// are other crates): reconcile, act and request paths return errors instead of panicking.
#![deny(clippy::unwrap_used)]

pub mod api;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod dead_letters;
pub mod emulator;
pub mod ens;
pub mod plugin;
pub mod receiver;
pub(crate) mod shutdown;
pub mod telemetry;
pub mod uninstall_check;
