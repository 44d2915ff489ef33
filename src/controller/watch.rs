//! Watch streams that survive an API-server restart.
//!
//! After a restart the API server's watch cache starts at the current etcd revision, and every
//! watch resumed from an older resourceVersion is refused with 410 Gone ("too old resource
//! version"). kube-runtime 5 then goes wrong in two ways, each seen leaving the controller blind
//! to its objects for minutes (tests/apiserver_restart.rs):
//! - its relist uses `resourceVersion=0` (any cached state), which right after the restart can
//!   again be older than the watch cache's window: list, watch, 410, list, ... with growing
//!   backoff. client-go relists with a consistent read after a 410; so does [`watch`]
//!   (`ListSemantic::MostRecent`, served from the watch cache on current API servers).
//! - when *starting* a watch is refused with 410, it retries the same resourceVersion forever.
//!   [`watch`] starts a fresh watcher, which lists again.
//!
//! Even so, a restarted API server can refuse watches for a while (its watch caches settle); the
//! default backoff then grows to 30 s and more, so the controller could stay blind for half a
//! minute after the API server was fine again. [`watch`] retries within 5 s at most.

use std::fmt::Debug;
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use kube::runtime::WatchStreamExt;
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::{self, Event, ExponentialBackoff, ListSemantic, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// Longest wait between failed watch or list attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// `watcher(api, config)` with consistent lists and a backoff from 0.5 s to [`MAX_RETRY_DELAY`],
/// listing again (a fresh watcher) whenever a watch start is refused with 410. For metadata
/// only, pass an `Api<PartialObjectMeta<K>>`.
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let config = config.list_semantic(ListSemantic::MostRecent);
    let start = move || watcher(api.clone(), config.clone()).boxed();
    stream::unfold(start(), move |mut inner| {
        let start = start.clone();
        async move {
            let item = inner.next().await?;
            if start_gone(&item) {
                tracing::info!("watch resume refused with 410 Gone: listing again");
                inner = start();
            }
            Some((item, inner))
        }
    })
    .backoff(ResetTimerBackoff::new(
        ExponentialBackoff::from(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(MAX_RETRY_DELAY)
                .with_factor(2.0)
                .with_jitter()
                .without_max_times(),
        ),
        Duration::from_secs(120),
    ))
}

/// Whether `item` is a watch start refused because its resourceVersion is gone.
fn start_gone<K>(item: &Result<Event<K>, watcher::Error>) -> bool {
    matches!(item, Err(watcher::Error::WatchStartFailed(kube::Error::Api(s))) if s.code == 410)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;
    use kube::core::Status;

    fn api_error(code: u16) -> kube::Error {
        let mut s = Status::failure("too old resource version: 214 (217)", "Expired");
        s.code = code;
        kube::Error::Api(Box::new(s))
    }

    #[test]
    fn only_a_refused_watch_start_with_410_relists() {
        let gone: Result<Event<Secret>, _> = Err(watcher::Error::WatchStartFailed(api_error(410)));
        assert!(start_gone(&gone));
        let other: Result<Event<Secret>, _> = Err(watcher::Error::WatchStartFailed(api_error(500)));
        assert!(!start_gone(&other));
        let during: Result<Event<Secret>, _> = Err(watcher::Error::WatchFailed(api_error(410)));
        assert!(!start_gone(&during));
        assert!(!start_gone(&Ok::<_, watcher::Error>(
            Event::<Secret>::InitDone
        )));
    }
}
