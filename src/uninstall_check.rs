//! `ens-operator uninstall-check`: refuses an uninstall that would leave objects stuck
//! (charts/ens-operator/README.md, "Uninstalling"). Every EnsCallback and EnsSubscription the controller
//! manages carries its finalizer; with the controller gone, deleting one (or its namespace) waits
//! forever. The chart runs this as a pre-delete hook, so `helm uninstall` fails with the list
//! instead, and nothing is removed.

use kube::{Api, Client, Resource, ResourceExt, api::ListParams};
use serde::de::DeserializeOwned;

use crate::api::{EnsCallback, EnsSubscription, annotations::FINALIZER};

/// Flags of `ens-operator uninstall-check`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this namespace (the chart's `controller.watchNamespace`); all namespaces without it.
    #[arg(long)]
    pub namespace: Option<String>,
}

/// Why the check did not pass.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No client could be built from the environment.
    #[error("cannot reach the API server: {0}")]
    Client(#[source] kube::Error),
    /// A list call failed.
    #[error("cannot list {kind}: {source}")]
    List {
        /// The resource listed (plural).
        kind: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// Objects would be stuck: the message lists them and the ways out.
    #[error("{0}")]
    Stranded(String),
}

/// Lists the objects holding the finalizer; `Err(Stranded)` names them.
pub async fn run(args: Args) -> Result<(), Error> {
    let client = Client::try_default().await.map_err(Error::Client)?;
    let ns = args.namespace.as_deref();
    let mut held = finalized::<EnsCallback>(&client, ns).await?;
    held.extend(finalized::<EnsSubscription>(&client, ns).await?);
    match verdict(&held) {
        None => {
            println!("no EnsCallback or EnsSubscription holds the operator's finalizer");
            Ok(())
        }
        Some(message) => Err(Error::Stranded(message)),
    }
}

/// `Kind namespace/name` of each object of kind `K` that holds the finalizer.
async fn finalized<K>(client: &Client, ns: Option<&str>) -> Result<Vec<String>, Error>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let kind = K::kind(&());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::List {
            kind: K::plural(&()).into_owned(),
            source,
        })?;
    Ok(list
        .items
        .iter()
        .filter(|o| o.finalizers().iter().any(|f| f == FINALIZER))
        .map(|o| {
            format!(
                "{kind} {}/{}",
                o.namespace().unwrap_or_default(),
                o.name_any()
            )
        })
        .collect())
}

/// The refusal for `held` (`None`: nothing would be stuck).
fn verdict(held: &[String]) -> Option<String> {
    if held.is_empty() {
        return None;
    }
    Some(format!(
        "{} object(s) hold the operator's finalizer and would be stuck without the controller: {}. \
         Delete them first (each one's deletionPolicy decides what happens in ENS; Retain keeps \
         the ENS object), or uninstall with `helm uninstall --no-hooks` to keep them for a \
         reinstall of the operator, which resumes them",
        held.len(),
        held.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_held_passes_and_the_refusal_names_every_object_and_both_ways_out() {
        assert_eq!(verdict(&[]), None);
        let held = [
            "EnsCallback team-a/orders".to_owned(),
            "EnsSubscription team-b/sent".to_owned(),
        ];
        let message = verdict(&held).expect("refused");
        assert!(message.starts_with("2 object(s)"), "{message}");
        for part in [
            held[0].as_str(),
            held[1].as_str(),
            "deletionPolicy",
            "--no-hooks",
        ] {
            assert!(message.contains(part), "{part} missing: {message}");
        }
    }
}
