//! Everything about talking ENS's language: notification signing (shared by the receiver and the
//! emulator), and the REST client.

pub mod signing;
