//! `kubectl ens status`: finds the objects asked for, gathers their tree and prints it as text or
//! JSON, once or on every change (`--watch`).

use std::fmt::Write as _;
use std::time::Duration;

use kube::{Api, api::ListParams};

use super::{
    Ctx, Kind, Output, PluginError, gather,
    report::{CallbackReport, Cond, EventView, Remote, Section, SubscriptionReport, Tree},
};
use crate::api::{EnsCallback, EnsSubscription};

/// Runs `status`.
pub(crate) async fn status(
    ctx: &Ctx,
    kind: Option<Kind>,
    name: Option<&str>,
    output: Output,
    watch: bool,
    interval: Duration,
) -> Result<(), PluginError> {
    let mut last = String::new();
    loop {
        let tree = find_tree(ctx, kind, name).await?;
        let shown = match output {
            Output::Text => text(&tree),
            Output::Json => format!("{}\n", serde_json::to_string_pretty(&tree)?),
        };
        if shown != last {
            print!("{shown}");
            last = shown;
        }
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(interval).await;
    }
}

/// The objects named (or all of the namespace), gathered.
pub(crate) async fn find_tree(
    ctx: &Ctx,
    kind: Option<Kind>,
    name: Option<&str>,
) -> Result<Tree, PluginError> {
    let cbs: Api<EnsCallback> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let subs: Api<EnsSubscription> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let Some(name) = name else {
        let (all_cbs, all_subs) = gather::list_all(ctx).await.map_err(PluginError::kube(
            "listing EnsCallbacks and EnsSubscriptions",
        ))?;
        return Ok(gather::tree(ctx, &all_cbs, &all_subs).await);
    };
    if kind != Some(Kind::Subscription)
        && let Some(cb) = cbs
            .get_opt(name)
            .await
            .map_err(PluginError::kube("reading the EnsCallback"))?
    {
        let mine: Vec<EnsSubscription> = subs
            .list(&ListParams::default())
            .await
            .map_err(PluginError::kube("listing EnsSubscriptions"))?
            .items
            .into_iter()
            .filter(|s| s.spec.callback_ref.name == name)
            .collect();
        return Ok(gather::tree(ctx, &[cb], &mine).await);
    }
    if kind != Some(Kind::Callback)
        && let Some(sub) = subs
            .get_opt(name)
            .await
            .map_err(PluginError::kube("reading the EnsSubscription"))?
    {
        let parent = cbs
            .get_opt(&sub.spec.callback_ref.name)
            .await
            .map_err(PluginError::kube("reading the EnsCallback"))?;
        let parents: Vec<EnsCallback> = parent.into_iter().collect();
        return Ok(gather::tree(ctx, &parents, &[sub]).await);
    }
    Err(PluginError::NotFound {
        name: name.to_owned(),
        namespace: ctx.namespace.clone(),
    })
}

/// The tree as text.
pub(crate) fn text(tree: &Tree) -> String {
    let mut out = String::new();
    if tree.callbacks.is_empty() && tree.without_callback.is_empty() {
        let _ = writeln!(
            out,
            "no EnsCallbacks or EnsSubscriptions in namespace {}",
            tree.namespace
        );
    }
    for cb in &tree.callbacks {
        callback(&mut out, cb);
    }
    for s in &tree.without_callback {
        let _ = writeln!(
            out,
            "EnsSubscription {}/{}: its EnsCallback {} does not exist",
            s.namespace, s.name, s.callback
        );
        subscription(&mut out, s, "  ");
    }
    out
}

fn callback(out: &mut String, cb: &CallbackReport) {
    let _ = writeln!(
        out,
        "EnsCallback {}/{}  {}  (receiver {}){}{}",
        cb.namespace,
        cb.name,
        cb.url,
        cb.receiver,
        if cb.paused {
            "  [reconcile paused by annotation]"
        } else {
            ""
        },
        if cb.observe_only {
            "  [observe-only: nothing in ENS is changed]"
        } else {
            ""
        }
    );
    let p = "  ";
    conditions(out, p, &cb.conditions);
    if let Some(d) = &cb.verification_deadline {
        let left = d.left.as_deref().map_or("passed".to_owned(), |l| {
            format!(
                "{l} left{}{}",
                d.window
                    .as_deref()
                    .map(|w| format!(" of {w}"))
                    .unwrap_or_default(),
                if d.past_half {
                    ", more than half the window gone"
                } else {
                    ""
                }
            )
        });
        let _ = writeln!(out, "{p}Verification deadline: {} ({left})", d.at);
    }
    section(out, p, "Credentials", &cb.credentials, |c| {
        format!("Secret {} (account {})", c.secret, c.tenant)
    });
    section(out, p, "Route", &cb.route, |r| {
        if !r.present {
            return format!("Secret {} missing", r.secret);
        }
        let mut s = format!("Secret {} present", r.secret);
        if let Some(path) = &r.path {
            let _ = write!(s, ", path {path}");
        }
        if r.expect_probe {
            s.push_str(", accepts a verification probe");
        }
        let _ = write!(
            s,
            ", key {}",
            r.key.as_deref().unwrap_or("absent (no signature key yet)")
        );
        if let Some(prev) = &r.previous_key {
            let _ = write!(s, ", previous key {prev}");
        }
        match &r.served {
            None => s.push_str(", served: not checked (no --receiver-url)"),
            Some(Section::Ok(true)) => s.push_str(", served by the receiver: yes"),
            Some(Section::Ok(false)) => s.push_str(", served by the receiver: NO"),
            Some(Section::Error(e)) => {
                let _ = write!(s, ", served: error: {e}");
            }
        }
        s
    });
    section(out, p, "ENS", &cb.ens, |r| match r {
        Remote::NotRegistered => "no callback with this URL (not registered)".into(),
        Remote::Gone { id } => format!("callback {id} is GONE (deleted in ENS)"),
        Remote::Found(c) => format!(
            "callback {} {:?} status {}{}",
            c.callback_id,
            c.callback_name,
            c.status,
            c.status_reason
                .as_deref()
                .filter(|r| !r.is_empty())
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
    });
    section(out, p, "Last delivery", &cb.last_delivery, Clone::clone);
    events(out, p, &cb.events);
    for s in &cb.subscriptions {
        let _ = writeln!(
            out,
            "{p}└─ EnsSubscription {}  {}{}",
            s.name,
            s.event_category_types.join(","),
            if s.spec_paused { "  [spec.paused]" } else { "" }
        );
        subscription(out, s, "       ");
    }
}

fn subscription(out: &mut String, s: &SubscriptionReport, p: &str) {
    conditions(out, p, &s.conditions);
    section(out, p, "ENS", &s.ens, |r| match r {
        Remote::NotRegistered => "no subscription recorded".into(),
        Remote::Gone { id } => format!("subscription {id} is GONE (deleted in ENS)"),
        Remote::Found(v) => format!(
            "subscription {} {:?} status {}{}",
            v.subscription_id,
            v.subscription_name,
            v.status,
            v.status_reason
                .as_deref()
                .filter(|r| !r.is_empty())
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
    });
    events(out, p, &s.events);
}

fn conditions(out: &mut String, p: &str, conds: &[Cond]) {
    if conds.is_empty() {
        let _ = writeln!(out, "{p}Conditions: none yet (not reconciled)");
        return;
    }
    let _ = writeln!(out, "{p}Conditions:");
    for c in conds {
        let _ = write!(out, "{p}  {}={} {}", c.type_, c.status, c.reason);
        let _ = if c.message.is_empty() {
            writeln!(out)
        } else {
            writeln!(out, ": {}", c.message)
        };
    }
}

fn section<T>(out: &mut String, p: &str, title: &str, s: &Section<T>, f: impl Fn(&T) -> String) {
    match s {
        Section::Ok(v) => {
            let _ = writeln!(out, "{p}{title}: {}", f(v));
        }
        Section::Error(e) => {
            let _ = writeln!(out, "{p}{title}: error: {e}");
        }
    }
}

fn events(out: &mut String, p: &str, s: &Section<Vec<EventView>>) {
    match s {
        Section::Ok(list) if list.is_empty() => {
            let _ = writeln!(out, "{p}Events: none");
        }
        Section::Ok(list) => {
            let _ = writeln!(out, "{p}Events:");
            for e in list {
                let _ = writeln!(
                    out,
                    "{p}  {} {} (x{}, {}): {}",
                    e.type_, e.reason, e.count, e.last_seen, e.message
                );
            }
        }
        Section::Error(e) => {
            let _ = writeln!(out, "{p}Events: error: {e}");
        }
    }
}
