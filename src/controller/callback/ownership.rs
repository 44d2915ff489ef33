//! Whether a callback ENS holds is this object's to act on (docs/design.md §8): checked before any
//! mutation of it, by reconcile and by cleanup alike. A callback id on the object is only an
//! annotation anyone with edit rights can write; what ENS holds under it decides.
//!
//! Pure: no I/O.

use kube::ResourceExt;

use crate::{
    api::{
        EnsCallback,
        annotations::{CALLBACK_ID, CREATE_PENDING},
    },
    controller::names,
    ens::Callback,
};

/// What an EnsCallback claims, as far as ownership goes.
#[derive(Clone, Debug, PartialEq)]
pub struct Claimant {
    /// `spec.url`.
    pub url: String,
    /// The ENS name the operator derives for this object.
    pub derived_name: String,
    /// The name asked for: `spec.callbackName`, else the derived one.
    pub asked_name: String,
    /// The id the controller confirmed before (status).
    pub confirmed_id: Option<String>,
    /// The id recorded on the object (annotation, else status).
    pub recorded_id: Option<String>,
    /// Whether this object's own create is pending (annotation and status flag).
    pub pending_create: bool,
}

impl Claimant {
    /// What `obj` claims, read from the object alone (its status is the controller's record).
    pub fn of(obj: &EnsCallback, cluster_name: &str) -> Self {
        let (namespace, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
        let derived_name = names::callback_name(cluster_name, &namespace, &name);
        let status = obj.status.clone().unwrap_or_default();
        Self {
            url: obj.spec.url.clone(),
            asked_name: obj
                .spec
                .callback_name
                .clone()
                .unwrap_or_else(|| derived_name.clone()),
            derived_name,
            recorded_id: super::observe::recorded_id(obj),
            confirmed_id: status.callback_id,
            pending_create: obj.annotations().contains_key(CREATE_PENDING) && status.create_pending,
        }
    }
}

/// Whether `cb` (found by recorded id, or matched by URL) is the claimant's; `Err` says why not.
///
/// It is when its URL is the claimant's and one of: the controller confirmed it before; its name
/// is the one derived for the claimant; its name is the one asked for in spec, unless that is a
/// name derived for another object; it is what the claimant's own pending create made; it is
/// named by the claimant's annotation and its name is not one the operator derives (a callback
/// made by hand in Marketing Cloud's Setup, explicitly adopted).
pub fn owns(c: &Claimant, cb: &Callback) -> Result<(), String> {
    let id = cb.callback_id.as_str();
    if cb.url != c.url {
        return Err(format!(
            "ENS callback {id} has the URL {}, not this object's {}",
            cb.url, c.url
        ));
    }
    if c.confirmed_id.as_deref() == Some(id) {
        return Ok(());
    }
    let name = cb.callback_name.as_str();
    let by_name =
        name == c.derived_name || (name == c.asked_name && !names::looks_derived(&c.asked_name));
    let own_create = c.pending_create && name == c.asked_name;
    let annotated = c.recorded_id.as_deref() == Some(id);
    if by_name || own_create || (annotated && !names::looks_derived(name)) {
        return Ok(());
    }
    let whose = if names::looks_derived(name) {
        " (a name ens-operator derives for another object)"
    } else {
        ""
    };
    Err(if annotated {
        format!(
            "the annotated callback id {id} is not this object's: ENS names it {name:?}{whose}; nothing is changed in ENS"
        )
    } else {
        format!(
            "ENS already has callback {id} for this URL, named {name:?}{whose}, which this object did not create; to adopt a callback made by hand, annotate this EnsCallback with {CALLBACK_ID}={id}"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimant() -> Claimant {
        Claimant {
            url: "https://e.example/ens/orders".into(),
            derived_name: names::callback_name("c", "team-a", "orders"),
            asked_name: names::callback_name("c", "team-a", "orders"),
            confirmed_id: None,
            recorded_id: None,
            pending_create: false,
        }
    }

    fn object(annotations: &[(&str, &str)], status: crate::api::EnsCallbackStatus) -> EnsCallback {
        let spec =
            serde_json::from_value(serde_json::json!({"url": "https://e.example/ens/orders"}))
                .unwrap();
        let mut obj = EnsCallback::new("orders", spec);
        obj.metadata.namespace = Some("team-a".into());
        obj.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        obj.status = Some(status);
        obj
    }

    #[test]
    fn the_claimant_of_an_object_reads_its_annotation_over_status_and_needs_both_pending_marks() {
        let status = crate::api::EnsCallbackStatus {
            callback_id: Some("cb-confirmed".into()),
            create_pending: true,
            ..Default::default()
        };
        let bare = Claimant::of(&object(&[], status.clone()), "c");
        assert_eq!(bare.recorded_id.as_deref(), Some("cb-confirmed"));
        assert_eq!(bare.confirmed_id.as_deref(), Some("cb-confirmed"));
        assert!(
            !bare.pending_create,
            "the status flag alone is not a pending create"
        );
        assert_eq!(
            bare.asked_name,
            names::callback_name("c", "team-a", "orders")
        );

        let annotated = Claimant::of(
            &object(
                &[(CALLBACK_ID, "cb-annotated"), (CREATE_PENDING, "x")],
                status,
            ),
            "c",
        );
        assert_eq!(annotated.recorded_id.as_deref(), Some("cb-annotated"));
        assert_eq!(annotated.confirmed_id.as_deref(), Some("cb-confirmed"));
        assert!(annotated.pending_create);

        let unmarked = Claimant::of(&object(&[(CREATE_PENDING, "x")], Default::default()), "c");
        assert!(
            !unmarked.pending_create,
            "the annotation alone is not a pending create"
        );
    }

    fn remote(id: &str, name: &str, url: &str) -> Callback {
        Callback {
            callback_id: id.into(),
            callback_name: name.into(),
            url: url.into(),
            max_batch_size: Some(1000),
            status: "verified".into(),
            status_reason: None,
        }
    }

    const URL: &str = "https://e.example/ens/orders";

    #[test]
    fn a_callback_with_another_url_is_never_ours() {
        let mut c = claimant();
        c.confirmed_id = Some("cb-1".into());
        c.recorded_id = Some("cb-1".into());
        let err = owns(
            &c,
            &remote("cb-1", &c.derived_name, "https://e.example/ens/other"),
        );
        assert!(err.unwrap_err().contains("not this object's"));
    }

    #[test]
    fn a_callback_of_another_object_is_refused_even_when_annotated() {
        // Another team's callback id (ids are in status and Events), on this object's URL after
        // that team's object went away: its derived name belongs to that team.
        let mut c = claimant();
        c.recorded_id = Some("cb-9".into());
        let theirs = remote("cb-9", &names::callback_name("c", "team-b", "orders"), URL);
        assert!(
            owns(&c, &theirs)
                .unwrap_err()
                .contains("derives for another object")
        );
        // Asking for that name in spec does not make it this object's either.
        c.asked_name = theirs.callback_name.clone();
        assert!(owns(&c, &theirs).is_err());
        // Nor does matching it by URL.
        c.recorded_id = None;
        assert!(owns(&c, &theirs).unwrap_err().contains(CALLBACK_ID));
    }

    #[test]
    fn ours_by_confirmation_by_derived_name_or_by_explicit_adoption() {
        let c = claimant();
        assert_eq!(owns(&c, &remote("cb-1", &c.derived_name, URL)), Ok(()));
        // A callback made by hand is adopted only when its id is named on the object.
        let hand = remote("cb-2", "Orders (made in Setup)", URL);
        assert!(owns(&c, &hand).is_err());
        let mut adopting = c.clone();
        adopting.recorded_id = Some("cb-2".into());
        assert_eq!(owns(&adopting, &hand), Ok(()));
        // Once confirmed, a rename in ENS (drift) does not change whose it is.
        let mut confirmed = c.clone();
        confirmed.confirmed_id = Some("cb-3".into());
        assert_eq!(owns(&confirmed, &remote("cb-3", "renamed", URL)), Ok(()));
        // The object's own pending create, under the name it asked for.
        let mut pending = c.clone();
        pending.asked_name = "orders-cb".into();
        assert!(
            owns(&pending, &remote("cb-4", "orders-cb", URL)).is_ok(),
            "asked hand name"
        );
        pending.asked_name = names::callback_name("c", "team-b", "x");
        assert!(owns(&pending, &remote("cb-4", &pending.asked_name, URL)).is_err());
        pending.pending_create = true;
        assert_eq!(
            owns(&pending, &remote("cb-4", &pending.asked_name, URL)),
            Ok(())
        );
    }
}
