"""checkov over everything in infra/, offline, in one batched run (the slow part of infra tests).

Scanned: the Terraform (every module and root, modules expanded from the env roots), the
native Kubernetes manifests in infra/k8s, every Ray pod template rendered as a plain Pod
(checkov skips ray.io kinds entirely) and the runtime Dockerfile. The gate is check IDs, not
severities: ``--skip-download`` leaves every severity empty, so any failed check fails the test
unless it is in ``infra/.checkov.yaml`` or skipped inline, and every skip must give its reason.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_infra_k8s import iter_k8s_docs, render_ray_pods

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
CHECKOV = REPO / ".venv-iac" / "bin" / "checkov"
CONFIG = INFRA / ".checkov.yaml"


def _parse_reports(stdout: str) -> list[dict[str, Any]]:
    """checkov -o json prints one JSON value per scan target group, back to back."""
    decoder, pos, reports = json.JSONDecoder(), 0, []
    while pos < len(stdout):
        while pos < len(stdout) and stdout[pos].isspace():
            pos += 1
        if pos >= len(stdout):
            break
        value, pos = decoder.raw_decode(stdout, pos)
        reports.extend(value if isinstance(value, list) else [value])
    return reports


@pytest.fixture(scope="module")
def checkov_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not CHECKOV.exists():
        pytest.skip(f"{CHECKOV} absent: run `make infra-tools` (infra/requirements-iac.txt)")
    pods_dir = tmp_path_factory.mktemp("ray-pods")
    pods = render_ray_pods(list(iter_k8s_docs()))
    for pod in pods:
        (pods_dir / f"{pod['metadata']['name']}.yaml").write_text(yaml.safe_dump(pod, sort_keys=False))
    # The rendered pods live in the namespaces the real NetworkPolicies cover; checkov links
    # policies to pods only within one scan root, so the policies go beside the pods.
    policies = [doc for _, doc in iter_k8s_docs() if doc["kind"] == "NetworkPolicy"]
    assert policies, "infra/k8s must restrict ingress to the Ray pods"
    (pods_dir / "networkpolicies.yaml").write_text(yaml.safe_dump_all(policies, sort_keys=False))
    # --skip-download repeats the config's setting on purpose: without it checkov calls the
    # Prisma Cloud API (DNS lookups that can hang on an offline machine).
    cmd = [str(CHECKOV), "--config-file", str(CONFIG), "--skip-download", "-o", "json",
           "-d", "infra/terraform", "-d", "infra/k8s", "-d", str(pods_dir), "-d", "infra/docker"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), f"checkov crashed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    reports = _parse_reports(proc.stdout)
    return {"reports": reports, "pods": pods, "pods_dir": pods_dir, "returncode": proc.returncode}


def _results(run: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    out, seen = [], set()
    for report in run["reports"]:
        for check in report["results"].get(kind, []):
            key = (check["check_id"], check["file_path"], check["resource"])
            if key not in seen:  # checkov repeats a report per scan root; count each finding once
                seen.add(key)
                out.append(check)
    return out


@pytest.mark.slow
def test_checkov_finds_nothing_outside_the_documented_skips(checkov_run) -> None:
    failed = _results(checkov_run, "failed_checks")
    lines = sorted(f"{c['check_id']} {c['file_path']} {c['resource']}: {c['check_name']}" for c in failed)
    assert not failed, f"{len(failed)} checkov findings:\n" + "\n".join(lines)
    assert checkov_run["returncode"] == 0


@pytest.mark.slow
def test_checkov_scanned_every_framework_and_every_ray_pod(checkov_run) -> None:
    types = {r.get("check_type") for r in checkov_run["reports"]}
    assert {"terraform", "kubernetes", "dockerfile"} <= types, types
    scanned = {c["resource"] for kind in ("passed_checks", "failed_checks", "skipped_checks")
               for c in _results(checkov_run, kind) if c["resource"].startswith("Pod.")}
    expected = {f"Pod.{p['metadata']['namespace']}.{p['metadata']['name']}" for p in checkov_run["pods"]}
    # head + cpu + gpu per cluster, plus a submitter per RayJob/RayCronJob template
    assert len(expected) >= 15
    assert expected == scanned, sorted(expected ^ scanned)
    terraform_resources = {c["resource"] for kind in ("passed_checks", "failed_checks")
                           for c in _results(checkov_run, kind) if c["file_path"].endswith(".tf")}
    # The env roots' module calls are expanded, so the stack's resources are checked in place.
    assert any(r.startswith("module.stack.module.eks.aws_eks_cluster") for r in terraform_resources)


def test_every_skip_states_its_reason() -> None:
    lines = CONFIG.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("skip-check:"))
    entries = [line for line in lines[start + 1:] if line.strip().startswith("- ")]
    assert entries == [] or lines[start].strip() == "skip-check:"
    for line in entries:
        assert re.fullmatch(r"\s+- CKV2?_[A-Z0-9]+_\d+\s+# \S.{15,}", line), f"skip without a reason: {line!r}"
    inline = []
    for path in sorted(INFRA.rglob("*.tf")):
        inline += [(path, m) for m in re.findall(r"#checkov:skip=([^\n]*)", path.read_text())]
    for path in sorted((INFRA / "k8s").rglob("*.yaml")):
        inline += [(path, m) for m in re.findall(r"checkov\.io/skip\d+: ([^\n]*)", path.read_text())]
    assert inline, "expected the inline skips documented in infra/README.md"
    for path, body in inline:
        assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+[:=]\S.{15,}", body), f"{path}: inline skip without a reason: {body!r}"
