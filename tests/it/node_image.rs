//! The image `scripts/image.sh` builds for the local node (no registry, no container engine)
//! keeps the promises of the `Dockerfile`'s final stage, which users with a registry build: the
//! same user and entrypoint, and no shell. Read from the docker-archive itself.

use std::{path::Path, process::Command};

use serde_json::Value;

fn image_tar() -> String {
    std::env::var("ENS_TEST_NODE_IMAGE_TAR").unwrap_or_else(|_| {
        panic!("ENS_TEST_NODE_IMAGE_TAR is unset: run scripts/test.sh (or scripts/image.sh)")
    })
}

/// One member of a tar archive (`tar` itself: the archive is a plain USTAR file).
fn member(archive: &Path, name: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg(name)
        .output()
        .expect("run tar");
    assert!(out.status.success(), "{name} in {}", archive.display());
    out.stdout
}

fn list(archive: &Path) -> Vec<String> {
    let out = Command::new("tar")
        .arg("-tvf")
        .arg(archive)
        .output()
        .expect("run tar");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The `USER` and `ENTRYPOINT` of the Dockerfile's last stage.
fn final_stage() -> (String, Value) {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"))
        .expect("Dockerfile");
    let stage = text.rsplit_once("\nFROM ").expect("a FROM line").1;
    let value = |key: &str| {
        stage
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in the final stage"))
            .trim()
            .to_owned()
    };
    (
        value("USER "),
        serde_json::from_str(&value("ENTRYPOINT ")).expect("ENTRYPOINT in exec form"),
    )
}

#[test]
fn local_image_keeps_the_dockerfile_final_stage_promises() {
    let tar = image_tar();
    let tar = Path::new(&tar);
    let manifest: Value = serde_json::from_slice(&member(tar, "manifest.json")).unwrap();
    let entry = &manifest[0];
    let config: Value =
        serde_json::from_slice(&member(tar, entry["Config"].as_str().unwrap())).unwrap();
    let (user, entrypoint) = final_stage();
    assert_eq!(config["config"]["User"], user.as_str(), "same user");
    assert_eq!(user, "65532:65532", "non-root 65532");
    assert_eq!(
        config["config"]["Entrypoint"], entrypoint,
        "same entrypoint"
    );
    assert_eq!(entrypoint, serde_json::json!(["/ens-operator"]));
    assert!(
        config["config"].get("Cmd").is_none_or(Value::is_null),
        "no default command"
    );

    let layers = entry["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer");
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(
        diff_ids[0].as_str().unwrap().strip_prefix("sha256:"),
        layers[0].as_str().unwrap().strip_suffix("/layer.tar"),
        "the config's diff_id names the layer"
    );

    let dir = std::env::temp_dir().join(format!("ens-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let layer = dir.join("layer.tar");
    std::fs::write(&layer, member(tar, layers[0].as_str().unwrap())).unwrap();
    let files = list(&layer);
    let _ = std::fs::remove_dir_all(&dir);
    let names: Vec<&str> = files
        .iter()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    assert!(
        files
            .iter()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with(" ens-operator")),
        "/ens-operator is executable: {files:#?}"
    );
    for shell in ["sh", "bash", "dash", "ash", "busybox"] {
        assert!(
            !names.iter().any(|n| n.rsplit('/').next() == Some(shell)),
            "no {shell} in the image: {names:?}"
        );
    }
}
