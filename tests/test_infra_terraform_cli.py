"""The terraform binary on infra/terraform, offline: ``fmt -check``, ``init -backend=false`` and
``terraform test`` (which validates first) with a mocked aws provider (no credentials, nothing created).

They run where a terraform binary and a filesystem mirror holding hashicorp/aws exist (the CI
image has Terraform 1.11.4 and aws 5.100.0, promised by no package list); otherwise they skip
and say which is missing. init works on a scratch copy so no .terraform/ lands in the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TF_ROOT = REPO / "infra" / "terraform"
# The stack module's own tests (modules/stack/tests: every module, mocked provider), then each
# environment's settings planned through it (envs/*/tests). No separate `validate`: `test`
# validates the configuration before its plans, and each run loads the aws provider's schema
# (~4 s of CPU), the bulk of the time here.
ROOTS = {"modules/stack": [["init", "-backend=false", "-input=false"], ["test"]],
         "envs/dev": [["init", "-backend=false", "-input=false"], ["test"]],
         "envs/prod": [["init", "-backend=false", "-input=false"], ["test"]]}


# Use only the local mirror; never reach for a registry.
TERRAFORMRC = """provider_installation {
  filesystem_mirror {
    path    = "MIRROR"
    include = ["registry.terraform.io/hashicorp/*"]
  }
  direct {
    exclude = ["registry.terraform.io/*/*"]
  }
}
"""
MIRROR_CANDIDATES = ["/opt/tf-plugins", "~/.terraform.d/plugins", "~/.local/share/terraform/plugins",
                     "/usr/local/share/terraform/plugins", "/usr/share/terraform/plugins"]


def _provider_mirror(provider: str = "aws") -> Path | None:
    candidates = [os.environ["COCOSEG_TF_PLUGIN_MIRROR"]] if os.environ.get("COCOSEG_TF_PLUGIN_MIRROR") else []
    for base in [*candidates, *MIRROR_CANDIDATES]:
        root = Path(base).expanduser()
        if list(root.glob(f"registry.terraform.io/hashicorp/{provider}/*/linux_amd64/terraform-provider-{provider}_*")):
            return root
    return None


def _terraform() -> str:
    exe = shutil.which("terraform")
    if exe is None:
        pytest.skip("no terraform binary on PATH (no package registry ships a current one; see infra/README.md)")
    return exe


@pytest.fixture(scope="module")
def tf_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    _terraform()
    mirror = _provider_mirror()
    if mirror is None:
        pytest.skip(f"no filesystem mirror with hashicorp/aws under {MIRROR_CANDIDATES} "
                    "(or $COCOSEG_TF_PLUGIN_MIRROR): init/validate/test need the provider offline")
    rc = tmp_path_factory.mktemp("tfcli") / "terraformrc"
    rc.write_text(TERRAFORMRC.replace("MIRROR", str(mirror)))
    return {**os.environ, "TF_CLI_CONFIG_FILE": str(rc), "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0"}


def _tf(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([_terraform(), *args, "-no-color"], cwd=cwd, env=env or {**os.environ, "CHECKPOINT_DISABLE": "1"},
                          capture_output=True, text=True, timeout=timeout)


def test_terraform_fmt() -> None:
    proc = _tf(["fmt", "-check", "-recursive", "-diff"], cwd=TF_ROOT)
    assert proc.returncode == 0, f"run `terraform fmt -recursive infra/terraform`:\n{proc.stdout}{proc.stderr}"


@pytest.fixture(scope="module")
def tf_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch copy, so init's .terraform/ and lock files never land in the checkout."""
    dest = tmp_path_factory.mktemp("tf") / "terraform"
    shutil.copytree(TF_ROOT, dest, ignore=shutil.ignore_patterns(".terraform", ".terraform.lock.hcl"))
    return dest


def _run_steps(root: Path, steps: list[list[str]], env: dict[str, str]) -> list[tuple[list[str], subprocess.CompletedProcess]]:
    done = []
    for args in steps:
        done.append((args, _tf(args, root, env)))
        if done[-1][1].returncode != 0:
            break
    return done


@pytest.fixture(scope="module")
def tf_runs(tf_env: dict[str, str], tf_copy: Path) -> dict[str, list[tuple[list[str], subprocess.CompletedProcess]]]:
    """The roots run side by side: most of each run is loading the aws provider, which overlaps."""
    with ThreadPoolExecutor(len(ROOTS)) as pool:
        futures = {root: pool.submit(_run_steps, tf_copy / root, steps, tf_env) for root, steps in ROOTS.items()}
        return {root: future.result() for root, future in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("root", list(ROOTS))
def test_terraform_validate_and_test(tf_runs, root: str) -> None:
    runs = tf_runs[root]
    assert [args for args, _ in runs] == ROOTS[root]
    for args, proc in runs:
        assert proc.returncode == 0, f"terraform {' '.join(args)} in {root}:\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
        assert "Warning" not in proc.stdout + proc.stderr or args[0] == "init", proc.stdout + proc.stderr
    assert "0 failed" in runs[-1][1].stdout and " 0 passed" not in runs[-1][1].stdout, runs[-1][1].stdout
