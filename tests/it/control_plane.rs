//! The local control plane behaves like a real cluster where the operator relies on it: the
//! generated CRDs install, the examples apply, invalid manifests are refused by the API server
//! with the CEL/schema messages, ownerReference garbage collection and namespace deletion work,
//! and RBAC is enforced for impersonated users.

use std::time::Duration;

use crate::common::{
    TestNamespace, client, client_as,
    examples::{self, apply},
    install_crds, wait_gone,
};
use crate::serial;
use ens_operator::api::EnsCallback;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::{
    Api, Resource,
    api::{DeleteParams, PostParams},
};

#[tokio::test]
async fn crds_install_and_become_established() {
    let _cluster = serial::cluster().await;
    let client = client().await;
    install_crds(&client).await;
    // Idempotent: a second apply of the same CRDs changes nothing and still succeeds.
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "crd").await;
    let cbs: Api<EnsCallback> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        cbs.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn examples_apply_with_defaults() {
    let _cluster = serial::cluster().await;
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "examples").await;
    for e in examples::valid() {
        for doc in &e.docs {
            apply(&client, &ns.name, doc)
                .await
                .unwrap_or_else(|err| panic!("{}: {err}", e.path.display()));
        }
    }
    let cb = Api::<EnsCallback>::namespaced(client.clone(), &ns.name)
        .get("transactional-email")
        .await
        .unwrap();
    assert_eq!(
        cb.spec.max_batch_size, 1000,
        "the API server applies the schema default"
    );
    // The category lists both kinds, as `kubectl get ens` does. kubectl's discovery cache may
    // predate the CRDs for a moment; it refreshes on a miss, so allow a few attempts.
    let mut names = String::new();
    for _ in 0..20 {
        let out = crate::common::kubectl(&["get", "ens", "-n", &ns.name, "-o", "name"]);
        names = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && names.contains("enssubscription") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        names.contains("enscallback.ens-operator.io/engagement"),
        "{names}"
    );
    assert!(
        names.contains("enssubscription.ens-operator.io/email-outcomes"),
        "{names}"
    );
}

#[tokio::test]
async fn invalid_examples_are_refused_by_the_api_server_with_their_message() {
    let _cluster = serial::cluster().await;
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "invalid").await;
    for e in examples::invalid() {
        let expect = e.expect.clone().unwrap();
        let doc = if e.transition {
            apply(&client, &ns.name, &e.docs[0])
                .await
                .unwrap_or_else(|err| panic!("{}: first document: {err}", e.path.display()));
            &e.docs[1]
        } else {
            &e.docs[0]
        };
        match apply(&client, &ns.name, doc).await {
            Ok(()) => panic!("{}: accepted", e.path.display()),
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{}: {status:?}", e.path.display());
                assert!(
                    status.message.contains(&expect),
                    "{}: expected {expect:?} in {:?}",
                    e.path.display(),
                    status.message
                );
            }
            Err(other) => panic!("{}: {other}", e.path.display()),
        }
    }
}

#[tokio::test]
async fn owner_references_are_garbage_collected() {
    let _cluster = serial::cluster().await;
    let client = client().await;
    let ns = TestNamespace::new(&client, "gc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let mut owner = ConfigMap::default();
    owner.metadata.name = Some("owner".into());
    let owner = cms.create(&PostParams::default(), &owner).await.unwrap();
    let mut owned = Secret::default();
    owned.metadata.name = Some("owned".into());
    owned.metadata.owner_references = Some(vec![owner.controller_owner_ref(&()).unwrap()]);
    secrets
        .create(&PostParams::default(), &owned)
        .await
        .unwrap();
    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    // The garbage collector resyncs its monitors every 30 s; allow two periods.
    wait_gone(&secrets, "owned", Duration::from_secs(90)).await;
}

#[tokio::test]
async fn namespace_deletion_empties_and_removes_the_namespace() {
    let _cluster = serial::cluster().await;
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "nsdel").await;
    let doc = &examples::valid()
        .into_iter()
        .find(|e| e.path.ends_with("callback-minimal.yaml"))
        .unwrap()
        .docs[0];
    apply(&client, &ns.name, doc).await.unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&ns.name, &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&namespaces, &ns.name, Duration::from_secs(90)).await;
}

#[tokio::test]
async fn rbac_is_enforced_for_impersonated_service_accounts() {
    let _cluster = serial::cluster().await;
    let client = client().await;
    let ns = TestNamespace::new(&client, "rbac").await;
    let sa = format!("system:serviceaccount:{}:nobody", ns.name);
    let as_sa = client_as(&sa, vec!["system:serviceaccounts".into()]).await;
    match Api::<Secret>::namespaced(as_sa, &ns.name)
        .list(&Default::default())
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("a service account without a role listed Secrets: {other:?}"),
    }
    let out = crate::common::kubectl(&[
        "auth", "can-i", "list", "secrets", "-n", &ns.name, "--as", &sa,
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
}
