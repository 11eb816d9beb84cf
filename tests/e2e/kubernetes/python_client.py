"""The fake API server's wire format, read by an independent client.

Run by tests/e2e/kubernetes/python_client.rs with the official Python
`kubernetes` client (pinned in .ci/run): every call the Kubernetes executor
makes, with the answers deserialized into that client's models (which check
required fields and types), so a mistake shared by the fake and our Rust
client (kube + k8s-openapi) shows up here.

Usage: python python_client.py <server URL> <namespace> <a pod's token> <its pod name>
Exits 0 and prints "ok" when every answer parsed and said what it should.
"""

import sys

import kubernetes
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

URL, NS, TOKEN, TOKEN_POD = sys.argv[1:5]
LABELS = {"app.kubernetes.io/managed-by": "sluice", "app.kubernetes.io/instance": "pycheck"}
SELECTOR = ",".join(f"{k}={v}" for k, v in LABELS.items())

config = client.Configuration()
config.host = URL
config.client_side_validation = True
api = client.ApiClient(config)
core = client.CoreV1Api(api)
batch = client.BatchV1Api(api)
coordination = client.CoordinationV1Api(api)
authentication = client.AuthenticationV1Api(api)


def expect_status(call, code):
    """`call` fails with HTTP `code`; its body is a Status the client reads."""
    try:
        call()
    except ApiException as e:
        assert e.status == code, (e.status, e.body)
        return e
    raise AssertionError(f"expected HTTP {code}")


# A watch from an old resourceVersion: the test made the server expire it
# (410 Gone as an ERROR event), which the client raises as an ApiException
# (a watch with a timeout is not retried).
gone = expect_status(
    lambda: list(
        watch.Watch().stream(
            batch.list_namespaced_job, NS, resource_version="1", timeout_seconds=5
        )
    ),
    410,
)

# Server-side apply of a run's anchor (a ConfigMap) and of its claim, owned by it.
anchor = core.patch_namespaced_config_map(
    "pycheck-run",
    NS,
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pycheck-run", "labels": LABELS}},
    field_manager="sluice",
    force=True,
    _content_type="application/apply-patch+yaml",
)
assert isinstance(anchor, client.V1ConfigMap) and anchor.metadata.uid, anchor
owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "pycheck-run", "uid": anchor.metadata.uid,
         "controller": True, "blockOwnerDeletion": True}
claim = core.patch_namespaced_persistent_volume_claim(
    "pycheck-run",
    NS,
    {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
     "metadata": {"name": "pycheck-run", "labels": LABELS, "ownerReferences": [owner]},
     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
    field_manager="sluice",
    force=True,
    _content_type="application/apply-patch+yaml",
)
assert claim.metadata.owner_references[0].uid == anchor.metadata.uid, claim
assert claim.spec.access_modes == ["ReadWriteOnce"], claim

# A Job (its pod runs `sluice --version` in the fake's kubelet).
listed = batch.list_namespaced_job(NS, label_selector=SELECTOR)
assert isinstance(listed, client.V1JobList) and listed.items == [], listed
start = listed.metadata.resource_version
assert start, listed
job = {
    "apiVersion": "batch/v1", "kind": "Job",
    "metadata": {"name": "pycheck-job", "labels": LABELS, "ownerReferences": [owner]},
    "spec": {"backoffLimit": 0, "activeDeadlineSeconds": 60,
             "template": {"metadata": {"labels": LABELS},
                          "spec": {"restartPolicy": "Never",
                                   "containers": [{"name": "worker", "image": "sluice@sha256:" + "0" * 64,
                                                   "args": ["--version"]}]}}},
}
created = batch.create_namespaced_job(NS, job)
assert isinstance(created, client.V1Job) and created.metadata.uid, created
assert created.spec.backoff_limit == 0 and created.metadata.creation_timestamp, created
conflict = expect_status(lambda: batch.create_namespaced_job(NS, job), 409)
assert "AlreadyExists" in conflict.body, conflict.body

# Watch the Job from the list's resourceVersion until it completes.
done = None
for event in watch.Watch().stream(
    batch.list_namespaced_job, NS, label_selector=SELECTOR, resource_version=start, timeout_seconds=30
):
    assert event["type"] in ("ADDED", "MODIFIED", "DELETED"), event["type"]
    seen = event["object"]
    assert isinstance(seen, client.V1Job), type(seen)
    if seen.status and seen.status.succeeded == 1:
        done = seen
        break
assert done is not None, "the watch never showed the Job complete"
assert any(c.type == "Complete" and c.status == "True" for c in done.status.conditions), done.status

read = batch.read_namespaced_job("pycheck-job", NS)
assert read.metadata.name == "pycheck-job" and read.status.succeeded == 1, read

# Its pod, by the Job's label, with its container status, and its log.
pods = core.list_namespaced_pod(NS, label_selector="job-name=pycheck-job")
assert isinstance(pods, client.V1PodList) and len(pods.items) == 1, pods
pod = pods.items[0]
assert pod.metadata.owner_references[0].kind == "Job", pod.metadata
assert pod.status.phase == "Succeeded", pod.status
terminated = pod.status.container_statuses[0].state.terminated
assert terminated.exit_code == 0 and terminated.reason == "Completed", terminated
pod_events = list(
    watch.Watch().stream(core.list_namespaced_pod, NS, label_selector="job-name=pycheck-job",
                         resource_version=start, timeout_seconds=1)
)
assert pod_events and all(isinstance(e["object"], client.V1Pod) for e in pod_events), pod_events
log = core.read_namespaced_pod_log(pod.metadata.name, NS)
assert log.startswith("sluice"), log
assert core.read_namespaced_pod(pod.metadata.name, NS).metadata.uid == pod.metadata.uid

# TokenReview of a pod's projected token, and of one the cluster does not know.
review = authentication.create_token_review(
    client.V1TokenReview(spec=client.V1TokenReviewSpec(token=TOKEN, audiences=["sluice"]))
)
assert review.status.authenticated is True, review.status
assert review.status.audiences == ["sluice"], review.status
assert review.status.user.username.startswith(f"system:serviceaccount:{NS}:"), review.status.user
assert review.status.user.extra["authentication.kubernetes.io/pod-name"] == [TOKEN_POD], review.status.user
unknown = authentication.create_token_review(
    client.V1TokenReview(spec=client.V1TokenReviewSpec(token="forged", audiences=["sluice"]))
)
assert unknown.status.authenticated is False and unknown.status.error, unknown.status

# The scheduler's Lease: create, read, replace with the read resourceVersion,
# and a stale replace refused (409).
lease = coordination.create_namespaced_lease(
    NS,
    client.V1Lease(metadata=client.V1ObjectMeta(name="pycheck-lease"),
                   spec=client.V1LeaseSpec(holder_identity="host/1/1", lease_duration_seconds=15)),
)
current = coordination.read_namespaced_lease("pycheck-lease", NS)
assert current.spec.holder_identity == "host/1/1", current.spec
stale_version = current.metadata.resource_version
current.spec.holder_identity = "host/2/2"
replaced = coordination.replace_namespaced_lease("pycheck-lease", NS, current)
assert replaced.spec.holder_identity == "host/2/2", replaced.spec
current.metadata.resource_version = stale_version
expect_status(lambda: coordination.replace_namespaced_lease("pycheck-lease", NS, current), 409)

# Deletes: the Job, then the anchor, whose claim goes with it.
batch.delete_namespaced_job("pycheck-job", NS, propagation_policy="Background")
expect_status(lambda: batch.read_namespaced_job("pycheck-job", NS), 404)
core.delete_namespaced_config_map("pycheck-run", NS, propagation_policy="Background")
missing = expect_status(lambda: core.read_namespaced_persistent_volume_claim("pycheck-run", NS), 404)
assert "NotFound" in missing.body, missing.body
assert core.list_namespaced_config_map(NS, label_selector=SELECTOR).items == []

print(f"ok: kubernetes {kubernetes.__version__}")
