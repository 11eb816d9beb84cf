//! The files of `deploy/kubernetes/`: every YAML document parses and is a
//! named object; the scheduler's Role and ClusterRole grant exactly the calls
//! the Kubernetes executor makes (the fake API server also refuses the
//! scheduler any call they do not grant, so every other Kubernetes test
//! fails if the code needs more); the bindings, the Deployment and the
//! Service agree with each other and with the executor's defaults.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::repo_root;

/// What `deploy/kubernetes/rbac.yaml` grants the scheduler: (API group,
/// resource, verb) of every rule of its Role and ClusterRole.
pub(super) fn granted() -> BTreeSet<(String, String, String)> {
    let path = crate::support::repo_root().join("deploy/kubernetes/rbac.yaml");
    let text = std::fs::read_to_string(&path).expect("rbac.yaml");
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text).expect("rbac.yaml parses");
    let mut granted = BTreeSet::new();
    for document in documents
        .iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
    {
        for rule in document["rules"].as_array().expect("rules") {
            let strings = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .expect(key)
                    .iter()
                    .map(|v| v.as_str().expect("a string").to_owned())
                    .collect()
            };
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    for verb in strings("verbs") {
                        granted.insert((group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
    }
    granted
}

fn documents() -> Vec<Value> {
    let dir = repo_root().join("deploy/kubernetes");
    let mut documents = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for document in parsed {
            assert!(
                document["apiVersion"].is_string()
                    && document["kind"].is_string()
                    && document["metadata"]["name"].is_string(),
                "{}: {document}",
                file.display()
            );
            documents.push(document);
        }
    }
    documents
}

fn one<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = documents
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} {name}");
    found[0]
}

#[test]
fn the_deployment_files_parse_and_grant_exactly_what_the_executor_calls() {
    let documents = documents();
    // What the executor calls (host/src/executor/kubernetes/): Jobs created,
    // read, listed, watched and deleted; pods read, listed and watched; the anchor ConfigMap
    // and the claim applied server-side (patch, create when the apply makes
    // them), anchors listed and deleted by the sweep; the anchor's
    // finalizers (blockOwnerDeletion); the lease; TokenReview.
    let expected: BTreeSet<(String, String, String)> = [
        ("batch", "jobs", "create"),
        ("batch", "jobs", "get"),
        ("batch", "jobs", "list"),
        ("batch", "jobs", "watch"),
        ("batch", "jobs", "delete"),
        ("", "pods", "get"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "configmaps", "create"),
        ("", "configmaps", "patch"),
        ("", "configmaps", "list"),
        ("", "configmaps", "delete"),
        ("", "configmaps/finalizers", "update"),
        ("", "persistentvolumeclaims", "create"),
        ("", "persistentvolumeclaims", "patch"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "update"),
        ("authentication.k8s.io", "tokenreviews", "create"),
    ]
    .into_iter()
    .map(|(g, r, v)| (g.to_owned(), r.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(granted(), expected);

    // The Role is namespaced to the scheduler's namespace; both bindings name
    // the scheduler's service account and a role that exists.
    let role = one(&documents, "Role", "sluice-scheduler");
    assert_eq!(role["metadata"]["namespace"], "pipelines");
    for (kind, name, role_kind) in [
        ("RoleBinding", "sluice-scheduler", "Role"),
        (
            "ClusterRoleBinding",
            "sluice-scheduler-tokenreview",
            "ClusterRole",
        ),
    ] {
        let binding = one(&documents, kind, name);
        assert_eq!(binding["roleRef"]["kind"], role_kind);
        let target = binding["roleRef"]["name"].as_str().expect("roleRef");
        one(&documents, role_kind, target);
        assert_eq!(
            binding["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": "sluice-scheduler", "namespace": "pipelines"}])
        );
    }
    one(&documents, "ServiceAccount", "sluice-scheduler");
    // The workers' account (the executor's default) has no API token at all.
    let worker = one(&documents, "ServiceAccount", "sluice-worker");
    assert_eq!(worker["automountServiceAccountToken"], false);

    // The Deployment runs the scheduler with its home on the claim, and the
    // Service reaches the port its endpoint listens on.
    let deployment = one(&documents, "Deployment", "sluice-scheduler");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "sluice-scheduler");
    assert_eq!(deployment["spec"]["replicas"], 1);
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg"))
        .collect();
    assert_eq!(args.last(), Some(&"scheduler"), "{args:?}");
    assert!(args.contains(&"--executor=kubernetes"), "{args:?}");
    let image = args
        .iter()
        .find_map(|a| a.strip_prefix("--image="))
        .expect("--image");
    assert!(
        sluice::executor::kubernetes::ImageRef::parse(image).is_ok(),
        "{image}"
    );
    let listen = args
        .iter()
        .find_map(|a| a.strip_prefix("--endpoint-listen="))
        .expect("--endpoint-listen");
    let port: u64 = listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port");
    assert_eq!(container["ports"][0]["containerPort"], port);
    let home = args
        .iter()
        .find_map(|a| a.strip_prefix("--home="))
        .expect("--home");
    let mount = container["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["mountPath"] == home)
        .expect("the home is mounted");
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the home's volume");
    let claim = volume["persistentVolumeClaim"]["claimName"]
        .as_str()
        .expect("a claim");
    one(&documents, "PersistentVolumeClaim", claim);
    let service = one(&documents, "Service", "sluice-scheduler");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(service["spec"]["ports"][0]["port"], port);

    // Workers reach the endpoint over TLS at the Service's name; its
    // certificate and key come from a TLS Secret mounted into this pod only.
    let arg = |flag: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(flag))
            .unwrap_or_else(|| panic!("{flag} in {args:?}"))
    };
    let url: url::Url = arg("--endpoint-url=").parse().expect("--endpoint-url");
    assert_eq!(url.scheme(), "https");
    assert_eq!(url.host_str(), Some("sluice-scheduler.pipelines.svc"));
    assert_eq!(url.port().map(u64::from), Some(port));
    for (flag, key) in [
        ("--endpoint-tls-cert=", "tls.crt"),
        ("--endpoint-tls-key=", "tls.key"),
    ] {
        let path = std::path::Path::new(arg(flag));
        assert_eq!(path.file_name().and_then(|f| f.to_str()), Some(key));
        let dir = path.parent().and_then(|d| d.to_str()).expect("a directory");
        let mount = container["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["mountPath"] == dir)
            .unwrap_or_else(|| panic!("{dir} is mounted"));
        assert_eq!(mount["readOnly"], true);
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("the TLS volume");
        assert_eq!(volume["secret"]["secretName"], "sluice-endpoint-tls");
    }
    assert_eq!(arg("--endpoint-ca-configmap="), "sluice-endpoint-ca");
    assert!(
        !args.iter().any(|a| a.starts_with("--endpoint-plain-http")),
        "{args:?}"
    );
}
