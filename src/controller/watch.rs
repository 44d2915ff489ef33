//! Watch streams that survive an API-server restart.
//!
//! After a restart the API server's watch cache starts at the current etcd revision, and every
//! watch resumed from an older resourceVersion is refused with 410 Gone ("too old resource
//! version"). kube-runtime 5 then goes wrong in two ways, each seen leaving the controller blind
//! to its objects for minutes (tests/it/apiserver_restart.rs):
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
//!
//! Worst of all, a `Controller` merges all its watches into one trigger stream behind its own
//! backoff (`trigger_backoff`, client-go's 0.8 s doubling to 30 s): one failing watch pauses
//! every watch of that controller, and each further error pauses them again, longer. After a
//! restart the several watches fail one after another, and the controller saw nothing for
//! minutes while its objects waited for the event of its own finalizer patch. So [`watch`] ends
//! every error where it happens: logged, and retried by that watch alone after its own backoff;
//! the stream it returns never yields one, and the controller's backoff never engages.

use std::fmt::Debug;
use std::time::Duration;

use futures::{Stream, StreamExt, future, stream};
use kube::runtime::WatchStreamExt;
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::{self, Event, ExponentialBackoff, ListSemantic, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// Longest wait between failed watch or list attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// `watcher(api, config)` with consistent lists and a backoff from 0.5 s to [`MAX_RETRY_DELAY`],
/// listing again (a fresh watcher) whenever a watch start is refused with 410. Errors are logged
/// and retried here, never yielded. For metadata only, pass an `Api<PartialObjectMeta<K>>`.
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&Default::default()).into_owned();
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
    .filter_map(move |item| {
        future::ready(match item {
            Ok(event) => Some(Ok(event)),
            Err(error) => {
                tracing::warn!(%error, %kind, "watch failed; retrying");
                None
            }
        })
    })
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

    #[tokio::test]
    async fn errors_are_retried_here_never_yielded() {
        // Nothing listens on the port: every list fails at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        let api: Api<Secret> = Api::all(kube::Client::try_from(config).unwrap());
        let mut stream = std::pin::pin!(watch(api, watcher::Config::default()));
        // Each attempt starts with `Init`, then its list fails; the first retry comes after
        // 0.5-1 s, so several attempts fit in this window.
        let mut starts = 0;
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(item) = stream.next().await {
                assert!(
                    matches!(item, Ok(Event::Init)),
                    "the stream yielded {item:?}"
                );
                starts += 1;
            }
        })
        .await;
        assert!(
            starts >= 2,
            "the failed list was not retried ({starts} attempts)"
        );
    }
}
