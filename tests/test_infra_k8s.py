"""Offline validation of infra/k8s, the MLflow Helm values and the runtime Dockerfile.

- every ``ray.io/v1`` object (including the RayJob template embedded in the retraining
  ConfigMap) validates against the KubeRay v1.7.0 CRD schema in ``tests/fixtures/schemas`` in strict
  mode: an object schema with ``properties`` and neither ``additionalProperties`` nor
  ``x-kubernetes-preserve-unknown-fields`` rejects unknown fields, as kubeconform does;
- native kinds validate against the Kubernetes 1.32 OpenAPI schema bundled with
  ``kubernetes-validate`` (in ``.venv-iac``), ``--strict`` so unknown fields fail too;
- the MLflow chart values, rendered with example inputs and merged over the chart defaults,
  validate against the chart's ``values.schema.json``;
- the Ray manifests are rendered by infra/tools/render_k8s.py from infra/k8s-src and the
  committed files are what it renders now; every Ray container has a writable HOME; every job's
  GPU ask fits the GPU node group of both environments;
- project consistency: entry points are ``python -m pipelines.<job> --config
  pipelines/configs/<x>.yaml key=value...`` whose overrides load into the real ``JobConfig``;
  the CronJob's RayJob template and the RayCronJob carry the same spec; Ray versions agree.

The helpers ``iter_k8s_docs`` and ``render_ray_pods`` are shared with test_infra_checkov.py.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
KUBERAY_VERSION = "v1.7.0"
MLFLOW_CHART_VERSION = "1.11.5"
K8S_VERSION = "1.32.0"  # the EKS minor of both environments (env_setting)
JOBS = {p.stem for p in (REPO / "pipelines").glob("*.py") if not p.stem.startswith("_")}
# Kinds whose schema is nowhere offline (External Secrets CRDs): YAML-parsed only, stated in
# infra/README.md.
UNCHECKED_KINDS = {"SecretStore", "ExternalSecret"}


def env_setting(env: str, name: str) -> Any:
    """A setting an environment runs with: its argument to ``module "stack"`` in
    infra/terraform/envs/<env>/main.tf, else the stack variable's default (a literal)."""
    terraform = INFRA / "terraform"
    set_here = re.search(rf"^\s*{name}\s*=\s*(.+)$", (terraform / "envs" / env / "main.tf").read_text(), flags=re.M)
    default = re.search(rf'variable "{name}" \{{[^}}]*?default\s*=\s*(.+?)$',
                        (terraform / "modules" / "stack" / "variables.tf").read_text(), flags=re.M | re.S)
    value = (set_here or default).group(1).strip()
    return yaml.safe_load(value)


# libyaml where PyYAML has it: the manifests are parsed by most tests here.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def _parse(path: Path, mtime_ns: int) -> tuple[tuple[str, dict[str, Any]], ...]:
    rel = path.relative_to(REPO).as_posix()
    out = []
    for doc in yaml.load_all(path.read_text(), Loader=_LOADER):
        if not doc:
            continue
        out.append((rel, doc))
        if doc.get("kind") == "ConfigMap":
            for key, text in (doc.get("data") or {}).items():
                if key.endswith((".yaml", ".yml")):
                    out += [(f"{rel}#ConfigMap/{doc['metadata']['name']}/{key}", inner)
                            for inner in yaml.load_all(text, Loader=_LOADER) if inner]
    return tuple(out)


def iter_k8s_docs(root: Path = K8S) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, document)`` for every YAML document under ``root`` (a fresh copy each time).

    Manifests embedded in a ConfigMap's data (the retraining RayJob template) are yielded too,
    as ``file#ConfigMap/name/key``, so they get the same checks as top-level objects.
    """
    for path in sorted(root.rglob("*.yaml")):
        for where, doc in _parse(path, path.stat().st_mtime_ns):
            yield where, copy.deepcopy(doc)


def _pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    spec = doc.get("spec") or {}
    kind = doc["kind"]
    if kind == "RayCronJob":
        spec = spec.get("jobTemplate") or {}
    if kind in {"RayJob", "RayCronJob"}:
        if "submitterPodTemplate" in spec:
            yield "submitter", spec["submitterPodTemplate"]
        spec = spec.get("rayClusterSpec") or {}
    elif kind == "RayService":
        spec = spec.get("rayClusterConfig") or {}
    if "headGroupSpec" in spec:
        yield "head", spec["headGroupSpec"]["template"]
    for group in spec.get("workerGroupSpecs") or []:
        yield f"worker-{group['groupName']}", group["template"]


def render_ray_pods(docs: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every pod template of every Ray CR as a plain ``v1/Pod`` (checkov ignores ray.io kinds).

    The template's labels and annotations (where inline ``checkov.io/skipN`` annotations live)
    are kept and ``spec`` is copied unchanged; the name says where the pod came from.
    """
    pods = []
    for where, doc in docs:
        if not str(doc.get("apiVersion", "")).startswith("ray.io/"):
            continue
        meta = doc.get("metadata") or {}
        base = meta.get("name") or meta.get("generateName", "").rstrip("-")
        for role, template in _pod_templates(doc):
            tmeta = template.get("metadata") or {}
            pods.append({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{doc['kind'].lower()}-{base}-{role}",
                    "namespace": meta.get("namespace", "default"),
                    "labels": dict(tmeta.get("labels") or {}),
                    "annotations": {**(tmeta.get("annotations") or {}), "cocoseg.io/rendered-from": where},
                },
                "spec": copy.deepcopy(template["spec"]),
            })
    return pods


# --------------------------------------------------------------------------------------------
# KubeRay CRD schemas (strict)


def _strictify(node: Any) -> None:
    if isinstance(node, dict):
        if (node.get("type") == "object" and "properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        for value in node.values():
            _strictify(value)
    elif isinstance(node, list):
        for value in node:
            _strictify(value)


@pytest.fixture(scope="module")
def kuberay_validators(fixtures_dir: Path) -> dict[str, Any]:
    jsonschema = pytest.importorskip("jsonschema")
    schema_dir = fixtures_dir / "schemas" / f"kuberay-{KUBERAY_VERSION}-schemas"
    if not schema_dir.is_dir():
        pytest.skip(f"KubeRay CRD schemas absent: {schema_dir}")
    validators = {}
    for path in schema_dir.glob("*-ray.io-v1.json"):
        schema = json.loads(path.read_text())
        _strictify(schema)
        # The CRD schema leaves metadata to the API server; only require a mapping here.
        schema.setdefault("properties", {})["metadata"] = {"type": "object"}
        validators[path.name.split("-")[0]] = jsonschema.Draft7Validator(schema)
    assert {"raycluster", "rayjob", "raycronjob"} <= set(validators), sorted(validators)
    return validators


def _schema_errors(validators: dict[str, Any], where: str, doc: dict[str, Any]) -> list[str]:
    validator = validators.get(doc["kind"].lower())
    if validator is None:
        return [f"{where}: no KubeRay {KUBERAY_VERSION} schema for kind {doc['kind']}"]
    return [f"{where}: {doc['kind']} at {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:200]}"
            for e in validator.iter_errors(doc)]


def _ray_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(w, d) for w, d in iter_k8s_docs() if str(d.get("apiVersion", "")).startswith("ray.io/")]


def test_ray_manifests_exist() -> None:
    kinds = sorted({d["kind"] for _, d in _ray_docs()})
    assert kinds == ["RayCluster", "RayCronJob", "RayJob"], kinds
    assert all(d["apiVersion"] == "ray.io/v1" for _, d in _ray_docs())


def test_ray_manifests_match_kuberay_crd_schemas(kuberay_validators) -> None:
    errors = [e for where, doc in _ray_docs() for e in _schema_errors(kuberay_validators, where, doc)]
    assert not errors, "\n".join(errors)


def test_strict_schema_rejects_unknown_and_mistyped_fields(kuberay_validators) -> None:
    """The validator is not a rubber stamp: a typo'd field and a wrong type must both fail."""
    (where, job), = [(w, d) for w, d in _ray_docs() if w.endswith("rayjob-train.yaml")]
    typo = copy.deepcopy(job)
    typo["spec"]["shutdownAfterJobFinish"] = typo["spec"].pop("shutdownAfterJobFinishes")
    assert any("shutdownAfterJobFinish" in e for e in _schema_errors(kuberay_validators, where, typo))
    mistyped = copy.deepcopy(job)
    mistyped["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = "eight"
    assert any("maxReplicas" in e for e in _schema_errors(kuberay_validators, where, mistyped))


# --------------------------------------------------------------------------------------------
# Native kinds against the Kubernetes schema (kubernetes-validate, offline)


def test_native_kinds_match_kubernetes_schema(tmp_path: Path) -> None:
    exe = REPO / ".venv-iac" / "bin" / "kubernetes-validate"
    if not exe.exists():
        pytest.skip(f"{exe} absent: run `make infra-tools` (infra/requirements-iac.txt)")
    native = [(w, d) for w, d in iter_k8s_docs()
              if not str(d.get("apiVersion", "")).startswith("ray.io/") and d["kind"] not in UNCHECKED_KINDS]
    assert {d["kind"] for _, d in native} >= {"CronJob", "ConfigMap", "Role", "RoleBinding", "ServiceAccount",
                                              "NetworkPolicy"}
    files = []
    for i, (where, doc) in enumerate(native):
        path = tmp_path / f"{i:02d}-{doc['kind']}.yaml"
        path.write_text(f"# from {where}\n" + yaml.safe_dump(doc))
        files.append(str(path))
    proc = subprocess.run([str(exe), "--strict", "-k", K8S_VERSION, *files],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # It must really have found a schema for every file (it only warns when it cannot).
    assert "Couldn't find schema" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------
# MLflow Helm values against the chart schema


def _deep_merge(base: Any, extra: Any) -> Any:
    if isinstance(base, dict) and isinstance(extra, dict):
        out = dict(base)
        for key, value in extra.items():
            out[key] = _deep_merge(base.get(key), value) if key in base else value
        return out
    return extra


def _render_tftpl(path: Path, variables: dict[str, str]) -> str:
    text = path.read_text()
    used = set(re.findall(r"\$\{(\w+)\}", text))
    assert used == set(variables), f"{path.name} uses {sorted(used)}, the test renders {sorted(variables)}"
    return re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], text)


MLFLOW_EXAMPLE = {
    "db_host": "cocoseg-dev-mlflow-abc.cxyz.us-west-2.rds.amazonaws.com",
    "artifacts_bucket": "cocoseg-dev-mlflow-artifacts-123456789012",
    "role_arn": "arn:aws:iam::123456789012:role/cocoseg-dev-mlflow-abc",
    "region": "us-west-2",
}


def _mlflow_merged(fixtures_dir: Path, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    schema_path = fixtures_dir / "schemas" / f"mlflow-chart-{MLFLOW_CHART_VERSION}.values.schema.json"
    defaults_path = fixtures_dir / "schemas" / f"mlflow-chart-{MLFLOW_CHART_VERSION}.values.yaml"
    if not schema_path.exists() or not defaults_path.exists():
        pytest.skip(f"MLflow chart schema/defaults absent under {fixtures_dir / 'schemas'}")
    return json.loads(schema_path.read_text()), _deep_merge(yaml.safe_load(defaults_path.read_text()), values)


def _mlflow_values() -> dict[str, Any]:
    template = INFRA / "terraform" / "platform" / "values" / "mlflow.yaml.tftpl"
    return yaml.safe_load(_render_tftpl(template, MLFLOW_EXAMPLE))


def test_mlflow_values_match_chart_schema(fixtures_dir: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    values = _mlflow_values()
    schema, merged = _mlflow_merged(fixtures_dir, values)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(merged)]
    assert not errors, "\n".join(errors)
    # What the issue asks of the server: Postgres backend, S3 artifacts, basic auth on, and
    # no credential in the values.
    assert merged["backendStore"]["postgres"]["enabled"] and merged["artifactRoot"]["s3"]["enabled"]
    assert merged["auth"]["enabled"]
    assert merged["backendStore"]["postgres"]["password"] == "" and merged["auth"]["adminPassword"] == ""
    assert merged["backendStore"]["existingDatabaseSecret"]["name"]


def test_mlflow_schema_check_catches_a_misplaced_key(fixtures_dir: Path) -> None:
    """``existingDatabaseSecret`` belongs beside ``postgres``, not inside it: must fail."""
    jsonschema = pytest.importorskip("jsonschema")
    values = _mlflow_values()
    values["backendStore"]["postgres"]["existingDatabaseSecret"] = values["backendStore"].pop("existingDatabaseSecret")
    schema, merged = _mlflow_merged(fixtures_dir, values)
    assert list(jsonschema.Draft7Validator(schema).iter_errors(merged))


# --------------------------------------------------------------------------------------------
# Project consistency


def _entrypoints() -> list[tuple[str, str]]:
    out = []
    for where, doc in _ray_docs():
        spec = doc["spec"].get("jobTemplate", doc["spec"]) if doc["kind"] == "RayCronJob" else doc["spec"]
        if "entrypoint" in spec:
            out.append((where, spec["entrypoint"]))
    return out


def test_evaluate_and_infer_have_rayjobs_and_the_pipeline_evaluates() -> None:
    jobs = {Path(w).name: shlex.split(e)[2] for w, e in _entrypoints() if "#" not in w}
    assert jobs["rayjob-evaluate.yaml"] == "pipelines.evaluate" and jobs["rayjob-infer.yaml"] == "pipelines.infer"
    # The pipeline RayJob runs retrain: export, then register, which evaluates the eager model and the
    # served artifacts on the new snapshot before the gate (docs/promotion.md).
    assert jobs["rayjob-pipeline.yaml"] == "pipelines.retrain"
    retrain = (REPO / "cocoseg" / "retrain.py").read_text()  # the job's work (pipelines/retrain.py: run = retrain)
    assert retrain.index("export_checkpoint(cfg") < retrain.index("register(cfg")
    register = (REPO / "cocoseg" / "registry" / "register.py").read_text()
    assert "measure_served(" in register


def test_entrypoints_are_project_jobs_with_valid_overrides() -> None:
    sys.path.insert(0, str(REPO))
    from cocoseg import jobs
    from cocoseg.config import load_config
    from cocoseg.jobs.args import parse_job_args

    entries = _entrypoints()
    assert len(entries) >= 5, entries  # ingest, train, pipeline, CronJob template, RayCronJob
    for where, entry in entries:
        argv = shlex.split(entry)
        assert argv[:2] == ["python", "-m"] and argv[2].startswith("pipelines."), f"{where}: {entry}"
        assert argv[2].removeprefix("pipelines.") in JOBS, f"{where}: unknown job {argv[2]}"
        assert argv[3] == "--config" and re.fullmatch(r"pipelines/configs/[\w.-]+\.yaml", argv[4]), where
        # The job's own parser (cocoseg/jobs/<job>.py, which pipelines/<job>.py calls) takes its options
        # and positionals (WEIGHTS, SNAPSHOT: evaluate, infer); an undeclared one exits (argparse).
        job = argv[2].removeprefix("pipelines.")
        rest = parse_job_args(jobs.build_parser(job, argv[2]), argv[3:]).overrides
        # Environment references become example values; load_config rejects unknown keys and
        # values of the wrong type with the key's name.
        overrides = [re.sub(r"\$\{?(\w+)\}?", r"example-\1", a) for a in rest]
        assert all("=" in o for o in overrides), f"{where}: {overrides}"
        config = REPO / argv[4]
        assert config.exists(), f"{where}: --config {argv[4]} does not exist"
        load_config(config, overrides)


def _submitter_env(doc: dict[str, Any]) -> set[str]:
    """Variables the submitter pod's container defines: its ``env`` names and the keys of the
    ConfigMaps it takes with ``envFrom`` (looked up among the manifests)."""
    maps = {d["metadata"]["name"]: set(d.get("data") or {}) for _, d in iter_k8s_docs() if d.get("kind") == "ConfigMap"}
    spec = doc["spec"].get("jobTemplate", doc["spec"]) if doc["kind"] == "RayCronJob" else doc["spec"]
    names: set[str] = set()
    for container in spec.get("submitterPodTemplate", {}).get("spec", {}).get("containers", []):
        names |= {e["name"] for e in container.get("env", [])}
        for source in container.get("envFrom", []):
            names |= maps.get(source.get("configMapRef", {}).get("name", ""), set())
    return names


def test_entrypoint_variables_are_set_where_the_shell_expands_them() -> None:
    """KubeRay (K8sJobMode) runs ``ray job submit ... -- <entrypoint>`` through bash in the
    submitter pod, so every ``$VAR`` of an entrypoint is expanded there, not on the head: the
    submitter must define it (env, or a ConfigMap through envFrom)."""
    checked = 0
    for where, doc in _ray_docs():
        spec = doc["spec"].get("jobTemplate", doc["spec"]) if doc["kind"] == "RayCronJob" else doc["spec"]
        if "entrypoint" not in spec or spec.get("submissionMode", "K8sJobMode") != "K8sJobMode":
            continue
        used = set(re.findall(r"\$\{?(\w+)\}?", spec["entrypoint"]))
        missing = used - _submitter_env(doc)
        assert not missing, f"{where}: entrypoint uses {sorted(missing)}, which the submitter pod does not set"
        checked += 1
    assert checked >= 5


def test_scheduled_retraining_variants_share_one_rayjob_spec() -> None:
    docs = _ray_docs()
    (template,) = [d for w, d in docs if "#ConfigMap/" in w]
    (cron,) = [d for _, d in docs if d["kind"] == "RayCronJob"]
    assert template["kind"] == "RayJob" and template["metadata"].get("generateName")
    assert template["spec"] == cron["spec"]["jobTemplate"]
    assert "pipelines.retrain" in template["spec"]["entrypoint"]


def test_tune_rayjob_resumes_its_search_by_name_and_fits_its_trials() -> None:
    """rayjob-tune.yaml runs the search job with its state on S3 under a name the submitter sets (a
    retried or resubmitted job resumes it), and the GPU group can hold every concurrent trial."""
    (job,) = [d for w, d in _ray_docs() if w.endswith("rayjob-tune.yaml")]
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[2] == "pipelines.tune" and argv[4] == "pipelines/configs/tune.yaml"
    assert "storage.root=s3://$CHECKPOINTS_BUCKET" in argv and "tune.name=$TUNE_NAME" in argv
    value = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv[5:]}
    gpu = next(g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert gpu["maxReplicas"] >= int(value["tune.max_concurrent_trials"]) * int(value["scaling.num_workers"])


def test_rayjobs_clean_up_after_themselves() -> None:
    for where, doc in _ray_docs():
        spec = doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]
        if doc["kind"] == "RayCluster":
            continue
        assert spec["shutdownAfterJobFinishes"] is True, where
        assert 0 < spec["ttlSecondsAfterFinished"] <= 3600, where
        assert spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] <= 2, where


def test_ray_versions_and_images_agree() -> None:
    pinned = re.search(r'"ray\[[^\]]*\]==([\d.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={pinned}" in dockerfile
    assert re.search(r"^USER ray$", dockerfile, flags=re.M), "the runtime image must run as the non-root ray user"
    images = set()
    for where, doc in _ray_docs():
        spec = doc["spec"]
        spec = spec.get("jobTemplate", spec)
        cluster = spec.get("rayClusterSpec", spec)
        assert cluster["rayVersion"] == pinned, where
        for pod in render_ray_pods([(where, doc)]):
            images |= {c["image"] for c in pod["spec"]["containers"]}
    assert len(images) == 1, f"every Ray pod must run the one runtime image, found {sorted(images)}"


def test_gpu_workers_tolerate_the_gpu_taint() -> None:
    for pod in render_ray_pods(_ray_docs()):
        wants_gpu = any("nvidia.com/gpu" in (c.get("resources", {}).get("limits") or {})
                        for c in pod["spec"]["containers"])
        tolerates = any(t.get("key") == "nvidia.com/gpu" for t in pod["spec"].get("tolerations") or [])
        assert wants_gpu == tolerates, pod["metadata"]["name"]


def test_gpu_workers_turn_their_termination_into_a_preemption_drain() -> None:
    """Spot GPUs (docs/reliability.md): a GPU worker pod being terminated first drains its Ray node
    for preemption (Ray Train's just-in-time checkpoint), with a deadline inside the pod's grace
    period, which is inside EC2's 2-minute spot interruption notice."""
    seen = 0
    for pod in render_ray_pods(_ray_docs()):
        if not any("nvidia.com/gpu" in (c.get("resources", {}).get("limits") or {}) for c in pod["spec"]["containers"]):
            continue
        seen += 1
        grace = pod["spec"]["terminationGracePeriodSeconds"]
        (worker,) = pod["spec"]["containers"]
        hook = " ".join(worker["lifecycle"]["preStop"]["exec"]["command"])
        assert "ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION" in hook, pod["metadata"]["name"]
        deadline = int(re.search(r"--deadline-remaining-seconds (\d+)", hook).group(1))
        hold = int(re.search(r"sleep (\d+)", hook).group(1))
        assert 30 <= deadline <= hold < grace < 120, (pod["metadata"]["name"], deadline, hold, grace)
    assert seen


# --------------------------------------------------------------------------------------------
# One base, rendered: infra/tools/render_k8s.py


def _renderer() -> Any:
    spec = importlib.util.spec_from_file_location("render_k8s", INFRA / "tools" / "render_k8s.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rendered_manifests_are_up_to_date() -> None:
    """Like a lockfile: the committed manifests are exactly what the renderer makes of
    infra/k8s-src now, and every Ray manifest in infra/k8s comes from it."""
    rendered = _renderer().render()
    stale = [f for f, text in rendered.items() if not (K8S / f).exists() or (K8S / f).read_text() != text]
    assert not stale, f"run `python infra/tools/render_k8s.py` (or `make infra-render`): stale {stale}"
    hand_written = {Path(w.split("#")[0]).name for w, _ in _ray_docs()} - set(rendered)
    assert not hand_written, f"Ray manifests outside infra/k8s-src/jobs.yaml: {sorted(hand_written)}"


def test_renderer_merge_rules() -> None:
    merge = _renderer().merge
    base = {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}], "keep": {"x": 1, "y": 2}, "args": [1, 2]}
    overlay = {"env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}], "keep": {"y": None, "z": 3}, "args": [9]}
    assert merge(base, overlay) == {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
                                    "keep": {"x": 1, "z": 3}, "args": [9]}
    assert base["keep"] == {"x": 1, "y": 2}, "merge must not modify its inputs"


def _ray_containers(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``(where, container, pod spec)`` for every container of a Ray CR, the autoscaler sidecar
    (``autoscalerOptions``, which runs in the head pod) included."""
    for pod in render_ray_pods([("", doc)]):
        for container in pod["spec"]["containers"]:
            yield f"{pod['metadata']['name']}/{container['name']}", container, pod["spec"]
    spec = doc["spec"].get("jobTemplate", doc["spec"])
    cluster = spec.get("rayClusterSpec", spec)
    if "autoscalerOptions" in cluster:
        yield "autoscaler", cluster["autoscalerOptions"], cluster["headGroupSpec"]["template"]["spec"]


def test_every_ray_container_has_a_writable_home() -> None:
    """Read-only root filesystem everywhere, so HOME (Ray's session files and job CLI state,
    pip, torch and MLflow caches) must point into a mounted emptyDir in every container."""
    checked = 0
    for where, doc in _ray_docs():
        for name, container, pod in _ray_containers(doc):
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, f"{where} {name}"
            home = {e["name"]: e.get("value") for e in container.get("env", [])}.get("HOME")
            assert home, f"{where} {name}: no HOME on a read-only root filesystem"
            empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
            mounts = [m for m in container.get("volumeMounts", []) if m["name"] in empty_dirs
                      and (home == m["mountPath"] or home.startswith(m["mountPath"].rstrip("/") + "/"))]
            assert mounts and not mounts[0].get("readOnly"), f"{where} {name}: HOME={home} is not on a writable emptyDir"
            checked += 1
    assert checked >= 9 * 4, checked  # 9 Ray objects x (head, cpu, gpu, autoscaler) + submitters


def _gpu_ask(doc: dict[str, Any]) -> tuple[int, int]:
    """``(GPUs the GPU group may hold, GPU workers the entrypoint starts at once)``."""
    spec = doc["spec"].get("jobTemplate", doc["spec"])
    cluster = spec.get("rayClusterSpec", spec)
    held = 0
    for group in cluster["workerGroupSpecs"]:
        for container in group["template"]["spec"]["containers"]:
            per_pod = int((container.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu", 0))
            held += per_pod * group["maxReplicas"]
    args = dict(a.split("=", 1) for a in shlex.split(spec.get("entrypoint", "")) if "=" in a and not a.startswith("--"))
    workers = int(args.get("scaling.num_workers", 0)) if args.get("scaling.use_gpu") == "true" else 0
    return held, workers * int(args.get("tune.max_concurrent_trials", 1))


def test_gpu_asks_fit_the_gpu_node_group_of_every_environment() -> None:
    """The worker count follows the node group: a job's GPU workers must fit its GPU worker
    group (else Ray waits forever), and the group must fit gpu_max_size x gpus_per_node of the
    smallest environment (else pods stay Pending until activeDeadlineSeconds)."""
    capacity = {env: env_setting(env, "gpu_max_size") * env_setting(env, "gpus_per_node") for env in ("dev", "prod")}
    for where, doc in _ray_docs():
        held, wanted = _gpu_ask(doc)
        assert wanted <= held, f"{where}: the entrypoint starts {wanted} GPU workers, the gpu group holds {held}"
        for env, gpus in capacity.items():
            assert held <= gpus, f"{where}: the gpu group may hold {held} GPUs, {env} has {gpus} (envs/{env}/main.tf)"


if __name__ == "__main__":  # pragma: no cover - debugging aid: print the rendered pods
    yaml.safe_dump_all(render_ray_pods(list(iter_k8s_docs())), sys.stdout)


def test_offline_schemas_match_the_deployed_versions() -> None:
    """The schemas used here must be the versions stage 2 installs and stage 1 runs."""
    platform_vars = (INFRA / "terraform" / "platform" / "variables.tf").read_text()

    def default(var: str) -> str:
        match = re.search(rf'variable "{var}" \{{.*?default\s*=\s*"([^"]+)"', platform_vars, flags=re.S)
        assert match, f"platform/variables.tf: {var} has no string default"
        return match.group(1)

    assert default("kuberay_chart_version") == KUBERAY_VERSION.removeprefix("v")
    assert default("mlflow_chart_version") == MLFLOW_CHART_VERSION
    for env in ("dev", "prod"):
        eks = env_setting(env, "kubernetes_version")
        assert K8S_VERSION.startswith(f"{eks}."), f"{env} runs Kubernetes {eks}, native kinds are checked against {K8S_VERSION}"
