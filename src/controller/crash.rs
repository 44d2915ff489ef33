//! Crash points for the fault tests. With `ENS_OPERATOR_CRASH_AT=<point>` set, the controller
//! aborts when it reaches that point: no cleanup, no flush, no finalizer, exactly like `kill -9`
//! at that instant. Unset (always, outside tests) it costs one comparison per step.

use std::sync::OnceLock;

/// The environment variable naming the crash point.
pub const ENV: &str = "ENS_OPERATOR_CRASH_AT";

/// A place in the lifecycle where a crash leaves the most ambiguous state behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// The create-pending marker is written; the create POST is not sent.
    BeforeCreatePost,
    /// ENS created the callback; nothing of it is stored yet (its key lives only in memory).
    AfterCreatePost,
    /// The signature key is in its Secret; the callback id is not recorded on the object.
    AfterKeyWrite,
    /// ENS verified the callback; the status does not say so yet.
    AfterVerifyPost,
    /// ENS created the subscription; its id is not recorded.
    AfterSubscriptionPost,
    /// ENS deleted the callback; the finalizer is still on the object.
    AfterRemoteDelete,
}

impl Point {
    /// The name used in [`ENV`].
    pub const fn name(self) -> &'static str {
        match self {
            Self::BeforeCreatePost => "before-create-post",
            Self::AfterCreatePost => "after-create-post",
            Self::AfterKeyWrite => "after-key-write",
            Self::AfterVerifyPost => "after-verify-post",
            Self::AfterSubscriptionPost => "after-subscription-post",
            Self::AfterRemoteDelete => "after-remote-delete",
        }
    }
}

/// Aborts the process if `point` is the configured crash point.
pub fn reached(point: Point) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var(ENV).ok());
    if at.as_deref() == Some(point.name()) {
        eprintln!("{ENV}: crashing at {}", point.name());
        std::process::abort();
    }
}
