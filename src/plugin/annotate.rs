//! `kubectl ens reconcile` and `kubectl ens rotate-key`: one merge patch of an annotation the
//! controller acts on (any annotation change wakes its reconcile; the regenerate-key value is
//! acted on once per new value), then optionally waiting for the outcome.

use std::time::Duration;

use jiff::Timestamp;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::{Ctx, Kind, PluginError, render::find_tree, why::root_cause};
use crate::api::{
    EnsCallback, EnsSubscription,
    annotations::{RECONCILE_REQUESTED_AT, REGENERATE_KEY},
};
use crate::controller::recent::MAX_TTL;

/// Runs `reconcile`: sets the reconcile-requested-at annotation to now. With `wait`, waits
/// until `why` finds nothing wrong; while it still names a cause, the object it names is asked
/// again once the controller's memory of ENS answers ([`MAX_TTL`]) has lapsed, since a reconcile
/// within that time reuses the last answer instead of reading ENS.
pub(crate) async fn reconcile(
    ctx: &Ctx,
    name: &str,
    wait: bool,
    timeout: Duration,
) -> Result<(), PluginError> {
    let kind = request(ctx, name).await?;
    if !wait {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut asked = tokio::time::Instant::now();
    loop {
        let tree = find_tree(ctx, None, Some(name)).await?;
        match root_cause(&tree) {
            None => {
                println!("{kind}/{name}: nothing wrong (Ready, and ENS agrees)");
                return Ok(());
            }
            Some(c) if tokio::time::Instant::now() >= deadline => {
                return Err(PluginError::Timeout(
                    humantime::format_duration(timeout).to_string(),
                    format!("{}: {}", c.object, c.cause),
                ));
            }
            Some(c) => {
                if asked.elapsed() > MAX_TTL + Duration::from_secs(1) {
                    let again = c.object.split_once('/').map_or(name, |(_, n)| n);
                    request(ctx, again).await?;
                    asked = tokio::time::Instant::now();
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Annotates `name` (a callback, else a subscription) with reconcile-requested-at = now.
async fn request(ctx: &Ctx, name: &str) -> Result<&'static str, PluginError> {
    let now = Timestamp::now().to_string();
    let patch = Patch::Merge(json!({"metadata": {"annotations": {RECONCILE_REQUESTED_AT: now}}}));
    let kind = match annotate_either(ctx, name, &patch).await? {
        Kind::Callback => "enscallback",
        Kind::Subscription => "enssubscription",
    };
    println!("{kind}/{name} annotated {RECONCILE_REQUESTED_AT}={now}");
    Ok(kind)
}

/// Patches the callback `name`, else the subscription `name`.
async fn annotate_either(
    ctx: &Ctx,
    name: &str,
    patch: &Patch<serde_json::Value>,
) -> Result<Kind, PluginError> {
    let cbs: Api<EnsCallback> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    if cbs
        .get_opt(name)
        .await
        .map_err(PluginError::kube("reading the EnsCallback"))?
        .is_some()
    {
        cbs.patch(name, &PatchParams::default(), patch)
            .await
            .map_err(PluginError::kube("annotating the EnsCallback"))?;
        return Ok(Kind::Callback);
    }
    let subs: Api<EnsSubscription> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    if subs
        .get_opt(name)
        .await
        .map_err(PluginError::kube("reading the EnsSubscription"))?
        .is_some()
    {
        subs.patch(name, &PatchParams::default(), patch)
            .await
            .map_err(PluginError::kube("annotating the EnsSubscription"))?;
        return Ok(Kind::Subscription);
    }
    Err(PluginError::NotFound {
        name: name.to_owned(),
        namespace: ctx.namespace.clone(),
    })
}

/// Runs `rotate-key`: sets the regenerate-key annotation to a new value; with `wait`, waits
/// until status records it as carried out and prints the new key's fingerprint.
pub(crate) async fn rotate_key(
    ctx: &Ctx,
    name: &str,
    wait: bool,
    timeout: Duration,
) -> Result<(), PluginError> {
    let cbs: Api<EnsCallback> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    if cbs
        .get_opt(name)
        .await
        .map_err(PluginError::kube("reading the EnsCallback"))?
        .is_none()
    {
        return Err(PluginError::NotFound {
            name: name.to_owned(),
            namespace: ctx.namespace.clone(),
        });
    }
    let before = current_key(ctx, name).await;
    let value = format!("kubectl-ens-{}", Timestamp::now().as_millisecond());
    cbs.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {REGENERATE_KEY: value}}})),
    )
    .await
    .map_err(PluginError::kube("annotating the EnsCallback"))?;
    println!(
        "enscallback/{name} annotated {REGENERATE_KEY}={value} (key before: {})",
        before.as_deref().unwrap_or("unknown")
    );
    if !wait {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let cb = cbs
            .get(name)
            .await
            .map_err(PluginError::kube("reading the EnsCallback"))?;
        let done =
            cb.status.as_ref().and_then(|s| s.key_rotation.as_deref()) == Some(value.as_str());
        if done {
            let after = current_key(ctx, name).await;
            println!(
                "enscallback/{name}: key rotated, now {} (the previous key stays accepted for the overlap)",
                after.as_deref().unwrap_or("unknown")
            );
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(PluginError::Timeout(
                humantime::format_duration(timeout).to_string(),
                format!("the controller has not carried out {REGENERATE_KEY}={value}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The fingerprint of the callback's current key, if its key Secret can be read.
async fn current_key(ctx: &Ctx, name: &str) -> Option<String> {
    let tree = find_tree(ctx, Some(Kind::Callback), Some(name))
        .await
        .ok()?;
    let cb = tree.callbacks.first()?;
    cb.route.ok()?.key.clone()
}
