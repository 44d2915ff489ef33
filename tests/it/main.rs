//! The integration tests: one binary, so one link of the crate and its dependencies, and one
//! process for every test (`cargo test --test it`; a module or a test by name filter:
//! `cargo test --test it receiver_fuzz::`).
//!
//! The harness comes first: the API-server harness (`common`), the one way to start the binary
//! (`launch`), a whole deployment per test (`stack`), a receiver process with a sink
//! (`receiver_support`) and a Kafka broker (`kafka_broker`), and the serial groups (`serial`): what tests sharing the process must not
//! do at the same time. The other modules are the tests, one per subject.

// The harness.
mod common;
mod kafka_broker;
mod launch;
mod receiver_support;
mod serial;
mod stack;

// The tests.
mod apiserver_restart;
mod control_plane;
mod controller;
mod crd_drift;
mod doc_citations;
mod ens_contract;
// Kills the controller at each crash point: needs the crash points.
#[cfg(feature = "fault-injection")]
mod faults;
mod gitops;
mod node;
mod node_image;
mod observe_only;
mod packaging;
mod plugin;
mod receiver_attack;
mod receiver_cluster;
mod receiver_dead_letters;
mod receiver_fuzz;
mod receiver_handoff;
mod receiver_http;
mod receiver_kafka;
mod receiver_limits;
mod receiver_nats;
mod receiver_spool;
mod schema;
mod secrets;
mod shutdown;
mod tenancy;
mod tenancy_endpoints;
