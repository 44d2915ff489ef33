//! The example manifests under `deploy/examples/`, and the invalid ones with the message each
//! must be refused with (`# expect:` header; `# transition:` means document 1 is applied first
//! and document 2 must be refused; `# structural:` means the OpenAPI schema, not CEL, refuses it).

use std::path::PathBuf;

use ens_operator::api::{EnsCallback, EnsSubscription};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::Value;

/// One manifest file.
pub struct Example {
    pub path: PathBuf,
    pub docs: Vec<Value>,
    pub expect: Option<String>,
    pub transition: bool,
    pub structural: bool,
}

fn load(dir: &str) -> Vec<Example> {
    let dir = super::repo().join(dir);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let header = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|s| s.trim().to_owned())
            };
            let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            Example {
                expect: header("# expect:"),
                transition: header("# transition:").is_some(),
                structural: header("# structural:").is_some(),
                docs: docs.into_iter().filter(|d| !d.is_null()).collect(),
                path,
            }
        })
        .collect()
}

/// The valid examples users copy.
pub fn valid() -> Vec<Example> {
    let v = load("deploy/examples");
    assert!(
        v.len() >= 4,
        "expected the minimal and full example of each kind"
    );
    v
}

/// The invalid examples; every one names the message it must be refused with.
pub fn invalid() -> Vec<Example> {
    let v = load("deploy/examples/invalid");
    for e in &v {
        assert!(
            e.expect.is_some(),
            "{} has no '# expect:' header",
            e.path.display()
        );
    }
    v
}

/// Kind of a manifest document.
pub fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

/// Server-side applies one manifest document into `ns`, returning the API server's verdict.
pub async fn apply(client: &Client, ns: &str, doc: &Value) -> Result<(), kube::Error> {
    let mut doc = doc.clone();
    doc["metadata"]["namespace"] = ns.into();
    let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
    let pp = PatchParams::apply("ens-operator-tests").force();
    match kind(&doc) {
        "EnsCallback" => Api::<EnsCallback>::namespaced(client.clone(), ns)
            .patch(&name, &pp, &Patch::Apply(&doc))
            .await
            .map(drop),
        "EnsSubscription" => Api::<EnsSubscription>::namespaced(client.clone(), ns)
            .patch(&name, &pp, &Patch::Apply(&doc))
            .await
            .map(drop),
        "Secret" => Api::<Secret>::namespaced(client.clone(), ns)
            .patch(&name, &pp, &Patch::Apply(&doc))
            .await
            .map(drop),
        other => panic!("examples hold no {other}"),
    }
}
