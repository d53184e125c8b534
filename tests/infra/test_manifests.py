"""infra/k8s templates: they parse, they name images, buckets, roles and service accounts only
through Terraform outputs, every RayJob runs one of the jobs/ entrypoints on a cluster whose
pods match the EKS node pools, carry the Ray auth token and run as the stage's IRSA account."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TF_DIR = REPO / "infra" / "terraform"
DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"

# RayJob manifest -> (jobs/<script>.py, service account output, worker groups). Ingestion has no
# GPU group (nothing to run on it); training reads cached features, so it has no CPU group.
RAYJOBS = {
    "ingest-webvid": ("ingest_webvid", "ingest_service_account", {"cpu"}),
    "ingest-webvid-val": ("ingest_webvid", "ingest_service_account", {"cpu"}),
    "ingest-cc3m": ("ingest_cc3m", "ingest_service_account", {"cpu"}),
    "ingest-llava595k": ("ingest_llava595k", "ingest_service_account", {"cpu"}),
    "ingest-instruct": ("ingest_instruct", "ingest_service_account", {"cpu"}),
    # Each GPU actor decodes its own frames on the GPU node's CPUs: no CPU group.
    "extract-features": ("extract_features", "extract_service_account", {"gpu"}),
    "extract-features-instruct": ("extract_features", "extract_service_account", {"gpu"}),
    "train-vl-stage1": ("train_vl_stage1", "train_service_account", {"gpu"}),
    "train-vl-stage2": ("train_vl_stage2", "train_service_account", {"gpu"}),
    "train-al-stage1": ("train_al_stage1", "train_service_account", {"gpu"}),
    "train-al-stage2": ("train_al_stage2", "train_service_account", {"gpu"}),
    "chain": ("chain", "chain_service_account", {"cpu", "gpu"}),
}
ENTRYPOINT = re.compile(
    r"^python jobs/(?P<script>[a-z0-9_]+)\.py --config (?P<config>configs/(?P<kind>[a-z0-9_]+)/(?P<name>[\w.-]+)\.yaml)"
    r"(?P<overrides>(?: '?[A-Za-z_][\w.]*=\S+)*)$"  # overrides holding [ ] (YAML lists) are quoted for the shell
)
TRAIN_CONFIG = re.compile(r"^configs/train/(?P<stage>(?:vl|al)_stage[12])_(?:tiny|7b|13b)\.yaml$")
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
NAMESPACED = {"ServiceAccount", "Deployment", "Service", "RayJob", "RayCluster"}


def _rayjobs(manifests) -> dict[str, dict]:
    jobs = {Path(f).stem: docs[0] for f, docs in manifests.items() if f.startswith("jobs/")}
    assert all(doc["kind"] == "RayJob" for doc in jobs.values())
    return jobs


def _cluster_specs(manifests) -> dict[str, dict]:
    """Every RayCluster spec: the long-lived cluster and the one inside each RayJob."""
    specs = {f"jobs/{name}": doc["spec"]["rayClusterSpec"] for name, doc in _rayjobs(manifests).items()}
    specs["cluster/raycluster"] = manifests["cluster/raycluster.yaml"][0]["spec"]
    return specs


def _pods(spec: dict) -> dict[str, dict]:
    """{"head": pod spec, "<group>": pod spec} of a RayCluster spec."""
    pods = {"head": spec["headGroupSpec"]["template"]["spec"]}
    pods.update({g["groupName"]: g["template"]["spec"] for g in spec.get("workerGroupSpecs", [])})
    return pods


def test_templates_parse_as_kubernetes_objects(manifests):
    assert set(manifests) == {
        "base/00-namespace.yaml",
        "base/10-serviceaccounts.yaml",
        "base/20-mlflow.yaml",
        "cluster/raycluster.yaml",
        *(f"jobs/{name}.yaml" for name in RAYJOBS),
    }
    for path, docs in manifests.items():
        assert docs, path
        for doc in docs:
            assert isinstance(doc, dict) and {"apiVersion", "kind", "metadata"} <= doc.keys(), path
            assert doc["metadata"]["name"], path
            if doc["kind"] in NAMESPACED:
                assert doc["metadata"]["namespace"] == "${k8s_namespace}", f"{path}: {doc['kind']} namespace"
    kinds = sorted(doc["kind"] for docs in manifests.values() for doc in docs)
    assert (
        kinds.count("RayJob") == len(RAYJOBS) and kinds.count("ServiceAccount") == 5 and kinds.count("RayCluster") == 1
    )


def test_every_placeholder_is_a_terraform_output_or_a_run_value(render, output_names):
    assert not output_names & render.RUN_VALUES.keys()
    for path in render.templates():
        missing = render.placeholders(path.read_text()) - output_names - render.RUN_VALUES.keys()
        assert not missing, f"{path.name}: placeholders without a Terraform output: {sorted(missing)}"
        if render.run_values_needed(path.read_text()):  # only training waits on a feature store's fingerprint
            assert path.name.startswith("train-"), path.name


def test_images_buckets_and_roles_come_only_from_outputs(manifests):
    text = "\n".join(yaml.safe_dump_all(docs) for docs in manifests.values())
    images = re.findall(r"^\s*image: (.+)$", text, flags=re.M)
    assert images and set(images) == {"${image}"}, set(images)
    buckets = re.findall(r"s3://([^/\s]+)", text)
    assert buckets and all(re.fullmatch(r"\$\{(media|features|checkpoints|mlflow)_bucket\}", b) for b in buckets), (
        buckets
    )
    for sa in manifests["base/10-serviceaccounts.yaml"]:
        name = PLACEHOLDER.fullmatch(sa["metadata"]["name"]).group(1)
        role = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert role == "${" + name.removesuffix("_service_account") + "_role_arn}", (name, role)
        assert sa["automountServiceAccountToken"] is False
    assert "arn:aws" not in text and ".amazonaws.com/" not in text.replace("eks.amazonaws.com/role-arn", "")


def test_rayjob_entrypoints_name_a_job_and_a_config(manifests, irsa_roles):
    jobs = _rayjobs(manifests)
    assert set(jobs) == set(RAYJOBS)
    access = {sa: role["read"] | role["write"] for sa, role in irsa_roles.items()}
    for name, job in jobs.items():
        script, sa_output, _ = RAYJOBS[name]
        m = ENTRYPOINT.match(job["spec"]["entrypoint"])
        assert m, (
            f"{name}: entrypoint {job['spec']['entrypoint']!r}: want `python jobs/X.py --config configs/K/F.yaml k=v`"
        )
        assert m["script"] == script, name
        if script.startswith("train_"):
            train = TRAIN_CONFIG.match(m["config"])
            assert train and train["stage"] == script.removeprefix("train_"), (name, m["config"])
        # Every bucket a stage is pointed at must be one its IRSA role can reach.
        buckets = set(re.findall(r"s3://\$\{(\w+)_bucket\}", m["overrides"]))
        sa_name = {"ingest": "ray-ingest", "extract": "ray-extract", "train": "ray-train", "chain": "ray-chain"}[
            sa_output.removesuffix("_service_account")
        ]
        assert buckets and buckets <= access[sa_name], f"{name}: {sorted(buckets)} vs role {sorted(access[sa_name])}"


def test_rayjobs_clean_up_and_resume(manifests):
    dockerfile = DOCKERFILE.read_text()
    workdir = re.findall(r"^WORKDIR (\S+)", dockerfile, flags=re.M)[-1]
    for name, job in _rayjobs(manifests).items():
        spec = job["spec"]
        assert spec["shutdownAfterJobFinishes"] is True, name
        assert 0 < spec["ttlSecondsAfterFinished"] <= 3600, name
        assert spec["backoffLimit"] >= 1, f"{name}: stages are idempotent, so a failed attempt should be retried"
        runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        assert runtime_env["working_dir"] == workdir, f"{name}: working_dir must be the image's code dir {workdir}"


def test_ray_pods_match_node_pools_auth_and_accounts(manifests):
    eks = (TF_DIR / "eks.tf").read_text()
    label_key = re.search(r'pool_label_key\s*=\s*"([^"]+)"', eks).group(1)
    taint = re.search(r'gpu_taint\s*=\s*\{\s*key = "([^"]+)", value = "([^"]+)", effect = "([^"]+)"', eks).groups()
    assert taint[2] == "NO_SCHEDULE"
    toleration = {"key": taint[0], "operator": "Equal", "value": taint[1], "effect": "NoSchedule"}
    for where, spec in _cluster_specs(manifests).items():
        assert spec["authOptions"] == {"mode": "token", "secretName": "ray-auth-token"}, where
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", where
        job = where.removeprefix("jobs/")
        sa = "${" + (RAYJOBS[job][1] if job in RAYJOBS else "chain_service_account") + "}"
        pods = _pods(spec)
        if job in RAYJOBS:
            assert set(pods) - {"head"} == RAYJOBS[job][2], where
        for group, pod in pods.items():
            pool = "gpu" if group == "gpu" else "cpu"
            assert pod["serviceAccountName"] == sa, (where, group)
            assert pod["nodeSelector"] == {label_key: pool}, (where, group)
            assert pod["securityContext"]["runAsNonRoot"] is True, (where, group)
            (container,) = pod["containers"]
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token", (where, group)
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "ray-auth-token", "key": "auth_token"}
            assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.${k8s_namespace}.svc.cluster.local:5000"
            limits, requests = container["resources"]["limits"], container["resources"]["requests"]
            assert limits == requests, f"{where}/{group}: requests == limits keeps Ray's view of the pod exact"
            assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"], (where, group)
            if pool == "gpu":
                assert limits["nvidia.com/gpu"] == 8, (where, group)
                assert pod["tolerations"] == [toleration], (where, group)
            else:
                assert "nvidia.com/gpu" not in limits and "tolerations" not in pod, (where, group)


def test_ray_version_matches_the_image_and_the_tested_ray(manifests):
    image_ray = re.search(r"^ARG RAY_VERSION=(\S+)$", DOCKERFILE.read_text(), flags=re.M).group(1)
    assert image_ray == importlib.metadata.version("ray"), "build the image with the Ray the tests run"
    for where, spec in _cluster_specs(manifests).items():
        assert spec["rayVersion"] == image_ray, where


def test_mlflow_server_uses_rds_secret_and_s3_via_irsa(manifests):
    deployment, service = manifests["base/20-mlflow.yaml"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "${mlflow_service_account}"
    assert pod["nodeSelector"] == {"vllama.io/pool": "cpu"}
    (server,) = pod["containers"]
    args = server["args"]
    assert "--artifacts-destination=s3://${mlflow_bucket}/artifacts" in args and "--serve-artifacts" in args
    for container in [*pod["initContainers"], server]:
        env = {e["name"]: e for e in container["env"]}
        uri = env["MLFLOW_BACKEND_STORE_URI"]["value"]
        assert uri == (
            "postgresql://${mlflow_db_username}@${mlflow_db_host}:${mlflow_db_port}/${mlflow_db_name}?sslmode=require"
        ), "the password must not be part of the URI"
        assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-db", "key": "password"}
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["ports"][0]["port"] == 5000


def test_namespace_enforces_pod_security(manifests):
    (ns,) = manifests["base/00-namespace.yaml"]
    assert ns["metadata"]["name"] == "${k8s_namespace}"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"
