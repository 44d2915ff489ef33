//! Crash points for the fault tests. In a build with the `fault-injection` feature (the test
//! suite's, `scripts/test.sh`), `ENS_OPERATOR_CRASH_AT=<point>` makes the controller abort when it
//! reaches that point: no cleanup, no flush, no finalizer, exactly like `kill -9` at that instant.
//! Without the feature (release and production builds) [`reached`] is empty and the variable is
//! ignored.

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
#[cfg(feature = "fault-injection")]
pub fn reached(point: Point) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var(ENV).ok());
    if at.as_deref() == Some(point.name()) {
        eprintln!("{ENV}: crashing at {}", point.name());
        std::process::abort();
    }
}

/// Does nothing: this build has no fault injection, whatever [`ENV`] says.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn reached(_point: Point) {}

#[cfg(test)]
mod tests {
    use std::process::{Command, Output};

    use super::*;

    const ALL: [Point; 6] = [
        Point::BeforeCreatePost,
        Point::AfterCreatePost,
        Point::AfterKeyWrite,
        Point::AfterVerifyPost,
        Point::AfterSubscriptionPost,
        Point::AfterRemoteDelete,
    ];

    /// Reaches every point. On its own it passes; the tests below run it in a child process with
    /// [`ENV`] set.
    #[test]
    fn reach_every_point() {
        for point in ALL {
            reached(point);
        }
    }

    /// This test binary, running only [`reach_every_point`], with `ENS_OPERATOR_CRASH_AT=at`.
    fn child_reaching_every_point(at: &str) -> Output {
        let path = module_path!().split_once("::").map_or("", |(_, p)| p);
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("{path}::reach_every_point")])
            .env(ENV, at)
            .output()
            .unwrap()
    }

    /// Whether the child ran `reach_every_point` to the end.
    fn passed(out: &Output) -> bool {
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed")
    }

    #[cfg(not(feature = "fault-injection"))]
    #[test]
    fn without_the_feature_the_variable_is_ignored() {
        for point in ALL {
            let out = child_reaching_every_point(point.name());
            assert!(passed(&out), "{}: {out:?}", point.name());
        }
    }

    #[cfg(feature = "fault-injection")]
    #[test]
    fn with_the_feature_each_point_aborts() {
        use std::os::unix::process::ExitStatusExt;
        for point in ALL {
            let out = child_reaching_every_point(point.name());
            assert_eq!(out.status.signal(), Some(6), "{}: {out:?}", point.name());
        }
        assert!(passed(&child_reaching_every_point("no-such-point")));
    }
}
