//! `kubectl ens why`: walks the gathered tree from the deepest dependency up (credentials,
//! receiver route, ENS callback, verification, conditions, then each subscription) and names the
//! first thing wrong, with the next step.

use super::{
    Ctx, PluginError,
    render::find_tree,
    report::{CallbackReport, CredProblem, Remote, Section, SubscriptionReport, Tree},
};
use crate::api::{annotations::VERIFICATION_KEY, conditions::ConditionType};

/// A root cause and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cause {
    /// `Kind/name` of the object it is about.
    pub(crate) object: String,
    /// What is wrong.
    pub(crate) cause: String,
    /// What to do next.
    pub(crate) next: String,
}

/// Runs `why`: prints the cause and the next step, or that nothing is wrong.
pub(crate) async fn run(ctx: &Ctx, name: &str) -> Result<(), PluginError> {
    let tree = find_tree(ctx, None, Some(name)).await?;
    match root_cause(&tree) {
        Some(c) => {
            println!("{}: {}", c.object, c.cause);
            println!("next: {}", c.next);
        }
        None => println!("{}", healthy(&tree)),
    }
    Ok(())
}

/// What a healthy tree looks like, in words.
fn healthy(tree: &Tree) -> String {
    let subs: usize = tree.callbacks.iter().map(|c| c.subscriptions.len()).sum();
    format!(
        "nothing wrong: {} callback(s) Ready and verified in ENS, {subs} subscription(s) active",
        tree.callbacks.len()
    )
}

/// The deepest thing wrong in the tree, if any.
pub(crate) fn root_cause(tree: &Tree) -> Option<Cause> {
    for cb in &tree.callbacks {
        if let Some(c) = callback_cause(cb) {
            return Some(c);
        }
        for s in &cb.subscriptions {
            if let Some(c) = subscription_cause(s) {
                return Some(c);
            }
        }
    }
    tree.without_callback.first().map(|s| Cause {
        object: format!("EnsSubscription/{}", s.name),
        cause: format!(
            "its EnsCallback {} does not exist in namespace {}",
            s.callback, s.namespace
        ),
        next: format!(
            "create the EnsCallback {} (or fix spec.callbackRef)",
            s.callback
        ),
    })
}

fn callback_cause(cb: &CallbackReport) -> Option<Cause> {
    let at = |cause: String, next: String| {
        Some(Cause {
            object: format!("EnsCallback/{}", cb.name),
            cause,
            next,
        })
    };
    if cb.paused {
        return at(
            "reconciliation is paused by the ens-operator.io/paused annotation".into(),
            format!(
                "kubectl annotate enscallback {} ens-operator.io/paused- -n {}",
                cb.name, cb.namespace
            ),
        );
    }
    match &cb.cred_problem {
        Some(CredProblem::SecretNotFound { namespace, name }) => {
            return at(
                format!("no credentials Secret {name} in namespace {namespace}"),
                format!(
                    "create it: kubectl create secret generic {name} -n {namespace} --from-literal=clientId=... --from-literal=clientSecret=... --from-literal=authBaseUrl=https://<subdomain>.auth.marketingcloudapis.com"
                ),
            );
        }
        Some(CredProblem::MissingKey { secret, key }) => {
            return at(
                format!("the credentials Secret {secret} has no {key:?} key"),
                format!("add the {key} key to Secret {secret}"),
            );
        }
        Some(CredProblem::NotConfigured) => {
            return at(
                "no spec.credentialsRef and no default credentials".into(),
                "set spec.credentialsRef to a Secret of this namespace".into(),
            );
        }
        Some(CredProblem::Other) => {
            if let Section::Error(e) = &cb.credentials {
                return at(
                    format!("the credentials cannot be read: {e}"),
                    "fix the Secret or the RBAC that reads it".into(),
                );
            }
        }
        None => {}
    }
    if cb.ens_refused_credentials
        && let Section::Error(e) = &cb.ens
    {
        return at(
            format!("ENS refused the credentials: {e}"),
            "check clientId, clientSecret and accountId in the credentials Secret against the installed package".into(),
        );
    }
    let route = cb.route.ok();
    let path = url_path(&cb.url);
    let not_served = route.and_then(|r| r.served.as_ref()).and_then(|s| match s {
        Section::Ok(false) => Some(format!("the receiver does not serve {path}")),
        Section::Error(e) => Some(format!("the receiver does not serve {path} ({e})")),
        Section::Ok(true) => None,
    });
    let remote = cb.ens.ok();
    if let Some(Remote::Gone { id }) = remote {
        return at(
            format!("the callback {id} was deleted in ENS out of band"),
            format!(
                "kubectl ens reconcile {} -n {} (the controller re-creates it)",
                cb.name, cb.namespace
            ),
        );
    }
    let verified_remotely =
        matches!(remote, Some(Remote::Found(c)) if c.status.eq_ignore_ascii_case("verified"));
    if let Some(d) = &cb.verification_deadline
        && !verified_remotely
    {
        let left = match &d.left {
            Some(l) if d.past_half => format!("{l} left, more than half the window gone"),
            Some(l) => format!("{l} left"),
            None => "the verification window has passed".into(),
        };
        let (route_words, next) = match (&not_served, cb.receiver.as_str()) {
            (Some(ns), _) => (
                ns.clone(),
                "make the receiver serve the path: check its pods and the route Secret in its namespace".to_owned(),
            ),
            (None, "External") => (
                "your endpoint must hand over the key ENS sent it".to_owned(),
                format!(
                    "kubectl annotate enscallback {} -n {} {VERIFICATION_KEY}=<the key your endpoint received>",
                    cb.name, cb.namespace
                ),
            ),
            (None, _) => (
                "the receiver has not handed over the key ENS sent".to_owned(),
                format!("check the receiver's logs for the probe on {path}"),
            ),
        };
        return at(
            format!("ENS has not verified the callback; {left}; {route_words}"),
            next,
        );
    }
    if let Some(ns) = not_served {
        return at(
            ns,
            "make the receiver serve the path: check its pods and the route Secret in its namespace"
                .into(),
        );
    }
    if let Some(r) = route
        && !r.present
        && cb.receiver == "Managed"
    {
        return at(
            format!("the route Secret {} is missing", r.secret),
            format!("kubectl ens reconcile {} -n {}", cb.name, cb.namespace),
        );
    }
    if let Section::Error(e) = &cb.ens {
        return at(
            format!("ENS could not be read: {e}"),
            "retry; if it persists, check ENS availability and the credentials' scopes".into(),
        );
    }
    if let Some(s) = cb
        .condition(ConditionType::Stalled)
        .filter(|c| c.status == "True")
    {
        return at(
            format!("stalled ({}): {}", s.reason, s.message),
            "change what the message names; the controller does not retry until then".into(),
        );
    }
    if let Some(r) = cb
        .condition(ConditionType::Ready)
        .filter(|c| c.status != "True")
    {
        return at(
            format!("not Ready ({}): {}", r.reason, r.message),
            format!("wait, or kubectl ens status {} for every section", cb.name),
        );
    }
    if cb.conditions.is_empty() {
        return at(
            "the controller has not reconciled it yet".into(),
            "kubectl ens check (is the controller running and watching this namespace?)".into(),
        );
    }
    None
}

fn subscription_cause(s: &SubscriptionReport) -> Option<Cause> {
    let at = |cause: String, next: String| {
        Some(Cause {
            object: format!("EnsSubscription/{}", s.name),
            cause,
            next,
        })
    };
    match s.ens.ok() {
        Some(Remote::Gone { id }) => {
            return at(
                format!("the subscription {id} was deleted in ENS out of band"),
                format!(
                    "kubectl ens reconcile {} -n {} (the controller re-creates it)",
                    s.name, s.namespace
                ),
            );
        }
        Some(Remote::Found(r)) if r.status.eq_ignore_ascii_case("paused") && !s.spec_paused => {
            let why = r
                .status_reason
                .as_deref()
                .filter(|x| !x.is_empty())
                .map(|x| format!(" ({x})"))
                .unwrap_or_default();
            return at(
                format!(
                    "subscription paused in ENS{why} while spec.paused is false: ENS drops its events"
                ),
                format!(
                    "kubectl ens reconcile {} -n {} (the controller resumes it)",
                    s.name, s.namespace
                ),
            );
        }
        _ => {}
    }
    if let Section::Error(e) = &s.ens {
        return at(
            format!("ENS could not be read: {e}"),
            "retry; if it persists, check ENS and the callback's credentials".into(),
        );
    }
    if let Some(c) = s
        .condition(ConditionType::Stalled)
        .filter(|c| c.status == "True")
    {
        return at(
            format!("stalled ({}): {}", c.reason, c.message),
            "change what the message names".into(),
        );
    }
    if let Some(c) = s
        .condition(ConditionType::Ready)
        .filter(|c| c.status != "True")
    {
        return at(
            format!("not Ready ({}): {}", c.reason, c.message),
            format!("wait, or kubectl ens status subscription {}", s.name),
        );
    }
    None
}

fn url_path(url: &str) -> String {
    crate::controller::callback::decide::url_path(url)
}
