//! The committed CRDs are exactly what the API types generate.

use ens_operator::crd;

#[test]
fn committed_crds_match_the_types() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stale = Vec::new();
    for def in crd::all() {
        let want = crd::to_yaml(&def).unwrap();
        // Both copies: a missing file (or folder) is as stale as a different one.
        for dir in ["crds", "charts/ens-operator/crds"] {
            let path = root.join(dir).join(crd::file_name(&def));
            if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "generated CRDs differ from {stale:?}; regenerate with:\n  cargo run -- crd --out-dir crds && cp crds/*.yaml charts/ens-operator/crds/"
    );
}

#[test]
fn printed_crds_are_the_committed_ones() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ens-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    for def in crd::all() {
        assert!(
            printed.contains(&crd::to_yaml(&def).unwrap()),
            "`ens-operator crd` lacks {}",
            def.metadata.name.unwrap()
        );
    }
}
