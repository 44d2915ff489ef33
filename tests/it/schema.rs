//! The examples against the generated schema, without an API server: the OpenAPI part with a
//! JSON-schema validator, the CEL rules with kube's client-side CEL evaluator. The same files go
//! through a real API server in `tests/it/control_plane.rs`.

use crate::common::examples::{self, Example, kind};
use ens_operator::crd;
use serde_json::Value;

fn schema_for(kind_name: &str) -> Value {
    let def = crd::all()
        .into_iter()
        .find(|c| c.spec.names.kind == kind_name)
        .unwrap_or_else(|| panic!("no CRD for {kind_name}"));
    serde_json::to_value(
        def.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

/// Every problem found with `doc` (given the previous version for transition rules).
fn problems(doc: &Value, old: Option<&Value>) -> Vec<String> {
    let schema = schema_for(kind(doc));
    let mut out: Vec<String> = jsonschema::validator_for(&schema)
        .expect("the CRD schema is a valid JSON schema")
        .iter_errors(doc)
        .map(|e| format!("schema: {e}"))
        .collect();
    if let Err(errs) = kube::core::cel::Validator::new().validate(&schema, doc, old) {
        out.extend(
            errs.into_vec()
                .into_iter()
                .map(|e| format!("cel: {}", e.message)),
        );
    }
    out
}

fn custom_docs(e: &Example) -> impl Iterator<Item = &Value> {
    e.docs.iter().filter(|d| kind(d).starts_with("Ens"))
}

#[test]
fn valid_examples_pass_schema_and_cel() {
    for e in examples::valid() {
        for doc in custom_docs(&e) {
            let p = problems(doc, None);
            assert!(p.is_empty(), "{}: {p:?}", e.path.display());
            // An update to itself is allowed (immutability rules only refuse changes).
            let p = problems(doc, Some(doc));
            assert!(p.is_empty(), "{} as an update: {p:?}", e.path.display());
        }
    }
}

#[test]
fn invalid_examples_are_refused_with_their_message() {
    let all = examples::invalid();
    assert!(all.len() >= 10);
    for e in all {
        let expect = e.expect.clone().unwrap();
        let (doc, old) = if e.transition {
            assert_eq!(e.docs.len(), 2, "{}", e.path.display());
            assert!(
                problems(&e.docs[0], None).is_empty(),
                "{}: the first document must be valid",
                e.path.display()
            );
            (&e.docs[1], Some(&e.docs[0]))
        } else {
            (&e.docs[0], None)
        };
        let p = problems(doc, old);
        if e.structural {
            assert!(
                p.iter().any(|m| m.starts_with("schema:")),
                "{}: schema accepted it: {p:?}",
                e.path.display()
            );
        } else {
            assert!(
                p.iter().any(|m| m.contains(&expect)),
                "{}: expected {expect:?}, got {p:?}",
                e.path.display()
            );
        }
    }
}

#[test]
fn defaults_are_in_the_schema() {
    let cb = schema_for("EnsCallback");
    let spec = &cb["properties"]["spec"]["properties"];
    assert_eq!(spec["maxBatchSize"]["default"], 1000);
    assert_eq!(spec["receiver"]["default"], "Managed");
    assert_eq!(spec["deletionPolicy"]["default"], "Delete");
    assert_eq!(spec["adoption"]["default"], "AdoptOrCreate");
    let sub = schema_for("EnsSubscription");
    assert_eq!(
        sub["properties"]["spec"]["properties"]["paused"]["default"],
        false
    );
}

#[test]
fn both_kinds_share_the_ens_category_and_have_status() {
    for def in crd::all() {
        assert_eq!(
            def.spec.names.categories.as_deref(),
            Some(&["ens".to_owned()][..])
        );
        let v = &def.spec.versions[0];
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{} lacks the status subresource",
            def.spec.names.kind
        );
        assert!(
            v.additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.iter().any(|c| c.name == "Ready"))
        );
    }
}
