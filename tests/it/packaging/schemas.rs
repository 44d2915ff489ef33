//! JSON schemas for kubeconform, made offline: built-in kinds from the real kube-apiserver's
//! `/openapi/v2`, custom kinds from CRD manifests (ours from the chart, ServiceMonitor and
//! HTTPRoute from their projects). Laid out as kubeconform's default registry is
//! (`<kind><-group prefix>-<version>.json`) and strict the way its `-strict` schemas are: objects
//! admit no unknown fields.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use serde_json::{Map, Value, json};

use super::tools::{kubectl, ok};

/// kubeconform's file name for a kind: `deployment-apps-v1.json`, `service-v1.json`.
pub fn file_name(group: &str, version: &str, kind: &str) -> String {
    let kind = kind.to_lowercase();
    match group.split('.').next().filter(|g| !g.is_empty()) {
        Some(prefix) => format!("{kind}-{}-{version}.json", prefix.to_lowercase()),
        None => format!("{kind}-{version}.json"),
    }
}

/// Writes a schema for every kind the API server serves and every CRD in `crds` into `dir`;
/// returns the file names written.
pub fn write_all(dir: &Path, crds: &[Value]) -> BTreeSet<String> {
    let mut written = BTreeSet::new();
    let openapi: Value =
        serde_json::from_str(&ok(&mut kubectl(&["get", "--raw", "/openapi/v2"]))).unwrap();
    let mut defs = openapi["definitions"].as_object().unwrap().clone();
    for def in defs.values_mut() {
        strict(def);
    }
    // Quantities are written as strings or numbers (`cpu: 1`); the spec says string only.
    defs.insert(
        "io.k8s.apimachinery.pkg.api.resource.Quantity".into(),
        json!({"oneOf": [{"type": "string"}, {"type": "number"}]}),
    );
    for (name, def) in &defs {
        let Some(gvks) = def["x-kubernetes-group-version-kind"].as_array() else {
            continue;
        };
        for gvk in gvks {
            let file = file_name(
                gvk["group"].as_str().unwrap_or(""),
                gvk["version"].as_str().unwrap(),
                gvk["kind"].as_str().unwrap(),
            );
            if file.contains("list-") || written.contains(&file) {
                continue;
            }
            let mut needed = BTreeMap::new();
            closure(name, &defs, &mut needed);
            let schema = json!({"$ref": format!("#/definitions/{name}"), "definitions": needed});
            std::fs::write(dir.join(&file), schema.to_string()).unwrap();
            written.insert(file);
        }
    }
    for crd in crds {
        let group = crd["spec"]["group"].as_str().unwrap();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap();
        for v in crd["spec"]["versions"].as_array().unwrap() {
            let mut schema = v["schema"]["openAPIV3Schema"].clone();
            let props = schema["properties"].as_object_mut().unwrap();
            for (k, t) in [
                ("apiVersion", "string"),
                ("kind", "string"),
                ("metadata", "object"),
            ] {
                props.entry(k).or_insert(json!({"type": t}));
            }
            strict(&mut schema);
            let file = file_name(group, v["name"].as_str().unwrap(), kind);
            std::fs::write(dir.join(&file), schema.to_string()).unwrap();
            written.insert(file);
        }
    }
    written
}

/// Adds every definition `name` refers to, transitively.
fn closure(name: &str, defs: &Map<String, Value>, out: &mut BTreeMap<String, Value>) {
    if out.contains_key(name) {
        return;
    }
    let def = defs
        .get(name)
        .unwrap_or_else(|| panic!("no definition {name}"));
    out.insert(name.to_owned(), def.clone());
    let mut refs = Vec::new();
    collect_refs(def, &mut refs);
    for r in refs {
        closure(&r, defs, out);
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                out.push(r.trim_start_matches("#/definitions/").to_owned());
            }
            m.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// An OpenAPI schema (v2 definition or CRD structural schema) → strict JSON schema: `nullable`,
/// int-or-string and preserve-unknown-fields spelled the JSON-schema way; no unknown fields
/// elsewhere. Walks schema positions only, so a property *named* `properties` is not mistaken
/// for a keyword.
fn strict(v: &mut Value) {
    let Value::Object(m) = v else { return };
    if m.get("format").and_then(Value::as_str) == Some("int-or-string") {
        *v = json!({"oneOf": [{"type": "string"}, {"type": "integer"}]});
        return;
    }
    if m.remove("nullable") == Some(Value::Bool(true))
        && let Some(t) = m.get("type").cloned()
    {
        m.insert("type".into(), json!([t, "null"]));
    }
    if m.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) && !m.contains_key("anyOf") {
        m.insert(
            "oneOf".into(),
            json!([{"type": "string"}, {"type": "integer"}]),
        );
    }
    let preserve = m.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if m.contains_key("properties") && !m.contains_key("additionalProperties") && !preserve {
        m.insert("additionalProperties".into(), false.into());
    }
    for (k, child) in m.iter_mut() {
        match k.as_str() {
            "properties" => child
                .as_object_mut()
                .into_iter()
                .flat_map(|p| p.values_mut())
                .for_each(strict),
            "items" | "additionalProperties" => strict(child),
            "allOf" | "anyOf" | "oneOf" => {
                child.as_array_mut().into_iter().flatten().for_each(strict)
            }
            _ => {}
        }
    }
}
