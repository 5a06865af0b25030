"""Offline checks of infra/terraform with python-hcl2 (the terraform binary: test_infra_terraform_cli.py).

Every ``.tf``/``.tfvars`` parses with python-hcl2 (run in ``.venv-hcl`` through
infra/tools/hcl_dump.py), and project rules hold on the parsed HCL: pinned provider versions and
chart versions, local modules only, no ``*`` in IAM actions or resources (exceptions named
below), required tags, KMS encryption on every bucket, database, log group and volume, no password in any
variable/output/attribute, locked S3 backends, prod safety settings, environments that hold only
what differs (backend, provider settings, their own values for the one stack module), a final
database snapshot named per instance.
Each rule also has a test that feeds it a broken snippet, so a rule cannot pass vacuously.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
TF_ROOT = REPO / "infra" / "terraform"
HCL_PY = REPO / ".venv-hcl" / "bin" / "python"
HCL_DUMP = REPO / "infra" / "tools" / "hcl_dump.py"
ENV_ROOTS = ["envs/dev", "envs/prod"]
REQUIRED_TAGS = {"Project", "Environment", "Owner", "CostCenter", "ManagedBy"}
AWS_CONSTRAINT = ">= 5.100, < 7.0"
# Statements allowed a bare "*" resource, with why (AWS offers no resource-level scoping).
WILDCARD_RESOURCE_ALLOWLIST = {
    "DescribeOnlyNoResourceLevel": "autoscaling/ec2 Describe* calls accept only Resource '*'",
    "ScaleOwnedNodeGroupsOnly": "EKS-managed ASG names are generated; scoped by the ownership-tag condition",
}
TAGGABLE = {
    "aws_vpc", "aws_subnet", "aws_internet_gateway", "aws_nat_gateway", "aws_eip", "aws_route_table",
    "aws_vpc_endpoint", "aws_default_security_group", "aws_security_group", "aws_flow_log",
    "aws_cloudwatch_log_group", "aws_iam_role", "aws_kms_key", "aws_eks_cluster", "aws_eks_node_group",
    "aws_eks_addon", "aws_eks_access_entry", "aws_iam_openid_connect_provider", "aws_launch_template",
    "aws_s3_bucket", "aws_db_instance", "aws_db_subnet_group", "aws_db_parameter_group",
}

Parsed = dict[str, Any]


def dump_hcl(root: Path) -> tuple[int, Parsed]:
    if not HCL_PY.exists():
        pytest.skip(f"{HCL_PY} absent: run `make infra-tools` (infra/requirements-hcl.txt)")
    proc = subprocess.run([str(HCL_PY), str(HCL_DUMP), str(root)], capture_output=True, text=True, timeout=120)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def parsed() -> Parsed:
    code, docs = dump_hcl(TF_ROOT)
    broken = {path: doc["__error__"] for path, doc in docs.items() if "__error__" in doc}
    assert code == 0 and not broken, f"python-hcl2 could not parse: {broken}"
    return docs


# --------------------------------------------------------------------------------------------
# Walking the parsed HCL


def blocks(docs: Parsed, block_type: str) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """Yield ``(file, type, name, body)`` for ``resource``/``data`` blocks."""
    for path, doc in docs.items():
        for entry in doc.get(block_type, []):
            for type_, named in entry.items():
                for name, body in named.items():
                    yield path, type_, name, body


def module_dirs(docs: Parsed) -> dict[str, list[str]]:
    dirs: dict[str, list[str]] = {}
    for path in docs:
        if path.endswith(".tf"):
            dirs.setdefault(str(Path(path).parent), []).append(path)
    return dirs


def statements(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from body.get("statement", [])
    for dynamic in body.get("dynamic", []):
        yield from (dynamic.get("statement") or {}).get("content", [])


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def resolve_locals(docs: Parsed, path: str, values: list[Any]) -> list[Any]:
    """``["${local.x}"]`` becomes the list ``x`` holds in the same module, so rules see the values."""
    folder = str(Path(path).parent)
    local_values = {k: v for p, doc in docs.items() if str(Path(p).parent) == folder
                    for entry in doc.get("locals", []) for k, v in entry.items()}
    out = []
    for value in values:
        ref = re.fullmatch(r"\$\{local\.(\w+)\}", str(value))
        out += as_list(local_values[ref.group(1)]) if ref and ref.group(1) in local_values else [value]
    return out


# --------------------------------------------------------------------------------------------
# Rules: each returns a list of violations ("file: what is wrong")


def rule_pinned_versions(docs: Parsed) -> list[str]:
    bad = []
    for folder, files in module_dirs(docs).items():
        terraform = [t for f in files for t in docs[f].get("terraform", [])]
        if not any("required_version" in t for t in terraform):
            bad.append(f"{folder}: no terraform.required_version")
        providers = {name: spec for t in terraform for rp in t.get("required_providers", [])
                     for name, spec in rp.items() if not name.startswith("__")}
        if not providers:
            bad.append(f"{folder}: no required_providers")
        for name, spec in providers.items():
            version = spec.get("version", "") if isinstance(spec, dict) else ""
            if not (re.search(r">=\s*[\d.]+", version) and re.search(r"<\s*[\d.]+", version)) and "~>" not in version:
                bad.append(f"{folder}: provider {name} version {version!r} needs a lower and an upper bound")
            if name == "aws" and version != AWS_CONSTRAINT:
                bad.append(f"{folder}: aws provider must be {AWS_CONSTRAINT!r} (offline mirror has 5.100.0), got {version!r}")
    return bad


def rule_local_modules(docs: Parsed) -> list[str]:
    bad = []
    for path, doc in docs.items():
        for entry in doc.get("module", []):
            for name, body in entry.items():
                if not str(body.get("source", "")).startswith(("./", "../")):
                    bad.append(f"{path}: module {name} source {body.get('source')!r} is not local")
    return bad


def _key_policy_documents(docs: Parsed) -> set[tuple[str, str]]:
    out = set()
    for path, type_, _, body in blocks(docs, "resource"):
        match = re.fullmatch(r"\$\{data\.aws_iam_policy_document\.(\w+)\.json\}", str(body.get("policy", "")))
        if match and type_ == "aws_kms_key":
            out.add((str(Path(path).parent), match.group(1)))
    return out


def _resource_is_scoped(resource: str) -> bool:
    """A '*' is only the trailing object/stream part after a specific ARN: ``<arn>/*`` or ``<arn>:*``."""
    if "*" not in resource:
        return True
    prefix = resource[:-2]
    return resource.endswith(("/*", ":*")) and "*" not in prefix and bool(re.search(r"\$\{|arn:[^*]+:[^:*]+$", prefix))


def rule_no_wildcard_iam(docs: Parsed) -> list[str]:
    bad = []
    key_policies = _key_policy_documents(docs)
    for path, type_, name, body in blocks(docs, "data"):
        if type_ != "aws_iam_policy_document":
            continue
        is_key_policy = (str(Path(path).parent), name) in key_policies
        for stmt in statements(body):
            where = f"{path}: {name}/{stmt.get('sid', '?')}"
            deny = stmt.get("effect") == "Deny"
            if "not_actions" in stmt or "not_resources" in stmt:
                bad.append(f"{where}: not_actions/not_resources grant everything else")
            for action in resolve_locals(docs, path, as_list(stmt.get("actions", []))):
                # a Deny may cover a whole service (e.g. s3:* without TLS); a grant never
                if "*" in str(action) and not deny:
                    bad.append(f"{where}: wildcard action {action!r}")
            for resource in as_list(stmt.get("resources", [])):
                resource = str(resource)
                if deny or _resource_is_scoped(resource):
                    continue
                if resource == "*" and (is_key_policy or stmt.get("sid") in WILDCARD_RESOURCE_ALLOWLIST):
                    continue
                bad.append(f"{where}: wildcard resource {resource!r}")
            for principal in stmt.get("principals", []):
                if "*" in as_list(principal.get("identifiers", [])) and not deny:
                    bad.append(f"{where}: Allow to principal '*'")
            if stmt.get("sid") == "ScaleOwnedNodeGroupsOnly" and not stmt.get("condition"):
                bad.append(f"{where}: the allowlisted mutation must keep its ownership-tag condition")
    for path, type_, name, body in blocks(docs, "resource"):
        policy = body.get("policy")
        # Inline JSON or jsonencode() would escape the statement checks above.
        if type_ in {"aws_iam_policy", "aws_iam_role_policy", "aws_kms_key", "aws_s3_bucket_policy"} and policy \
                and re.search(r"jsonencode|file\(|^\s*[{<]", str(policy)):
            bad.append(f"{path}: {type_}.{name} policy must come from an aws_iam_policy_document (checkable)")
    return bad


def rule_required_tags(docs: Parsed) -> list[str]:
    bad = []
    for path, doc in docs.items():
        for entry in doc.get("provider", []):
            for name, body in entry.items():
                if name != "aws":
                    continue
                tags = set()
                for default in body.get("default_tags", []):
                    tags |= set(default.get("tags", {}))
                if not REQUIRED_TAGS <= tags:
                    bad.append(f"{path}: provider aws default_tags lacks {sorted(REQUIRED_TAGS - tags)}")
    for path, type_, name, body in blocks(docs, "resource"):
        if type_ in TAGGABLE and "tags" not in body:
            bad.append(f"{path}: {type_}.{name} has no tags")
    return bad


def _refs(value: Any, type_: str) -> set[str]:
    return set(re.findall(rf"{type_}\.(\w+)", json.dumps(value)))


def rule_encryption(docs: Parsed) -> list[str]:
    bad = []
    by_dir: dict[str, list[tuple[str, str, str, dict[str, Any]]]] = {}
    for item in blocks(docs, "resource"):
        by_dir.setdefault(str(Path(item[0]).parent), []).append(item)
    for items in by_dir.values():
        def companions(type_: str, items=items) -> list[tuple[str, dict[str, Any]]]:
            return [(n, b) for _, t, n, b in items if t == type_]

        for path, type_, name, body in items:
            where = f"{path}: {type_}.{name}"
            if type_ == "aws_s3_bucket":
                sse = [b for _, b in companions("aws_s3_bucket_server_side_encryption_configuration")
                       if name in _refs(b.get("bucket"), "aws_s3_bucket")]
                kms = [d for b in sse for r in b.get("rule", []) for d in r.get("apply_server_side_encryption_by_default", [])
                       if d.get("sse_algorithm") == "aws:kms" and d.get("kms_master_key_id")]
                if not kms:
                    bad.append(f"{where}: no SSE-KMS configuration with a key")
                if not [b for _, b in companions("aws_s3_bucket_versioning")
                        if name in _refs(b.get("bucket"), "aws_s3_bucket")
                        and any(v.get("status") == "Enabled" for v in b.get("versioning_configuration", []))]:
                    bad.append(f"{where}: versioning not enabled")
                flags = ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
                if not [b for _, b in companions("aws_s3_bucket_public_access_block")
                        if name in _refs(b.get("bucket"), "aws_s3_bucket") and all(b.get(f) is True for f in flags)]:
                    bad.append(f"{where}: public access not fully blocked")
            if type_ == "aws_db_instance":
                if body.get("storage_encrypted") is not True or not body.get("kms_key_id"):
                    bad.append(f"{where}: storage not KMS-encrypted")
                if body.get("publicly_accessible") is not False:
                    bad.append(f"{where}: must set publicly_accessible = false")
                if body.get("manage_master_user_password") is not True:
                    bad.append(f"{where}: the master password must be RDS-managed in Secrets Manager")
            if type_ == "aws_cloudwatch_log_group" and not body.get("kms_key_id"):
                bad.append(f"{where}: log group not KMS-encrypted")
            if type_ == "aws_launch_template":
                for mapping in body.get("block_device_mappings", []):
                    if any(e.get("encrypted") is not True for e in mapping.get("ebs", [])):
                        bad.append(f"{where}: EBS volume not encrypted")
            if type_ == "aws_eks_cluster" and not body.get("encryption_config"):
                bad.append(f"{where}: Kubernetes secrets not KMS-encrypted")
    return bad


def rule_no_passwords(docs: Parsed) -> list[str]:
    bad = []
    for path, doc in docs.items():
        for kind in ("variable", "output"):
            for entry in doc.get(kind, []):
                for name, body in entry.items():
                    if re.search(r"password|passwd", name, re.I) or re.search(r"password", json.dumps(body.get("value", "")), re.I):
                        bad.append(f"{path}: {kind} {name} carries a password")
    for path, type_, name, body in blocks(docs, "resource"):
        for attr in ("password", "master_password", "master_user_password"):
            if attr in body:
                bad.append(f"{path}: {type_}.{name} sets {attr} (it would land in state)")
    return bad


def rule_locked_backends(docs: Parsed) -> list[str]:
    bad = []
    for root in [*ENV_ROOTS, "platform"]:
        backends = [b for path, doc in docs.items() if str(Path(path).parent) == root
                    for t in doc.get("terraform", []) for b in t.get("backend", [])]
        s3 = [b["s3"] for b in backends if "s3" in b]
        if not s3 or s3[0].get("use_lockfile") is not True or s3[0].get("encrypt") is not True:
            bad.append(f"{root}: needs backend \"s3\" with use_lockfile = true and encrypt = true")
    return bad


PROD_SETTINGS = {"db_deletion_protection": True, "db_multi_az": True, "force_destroy_buckets": False,
                 "single_nat_gateway": False, "eks_endpoint_public_access": False}
STACK = "modules/stack"
REQUIRED = object()  # a stack variable without a default


def stack_call(docs: Parsed, root: str) -> dict[str, Any]:
    """The arguments of ``module "stack"`` in an environment root (``{}`` when there is none)."""
    calls = [body for path, doc in docs.items() if str(Path(path).parent) == root
             for entry in doc.get("module", []) for name, body in entry.items() if name == "stack"]
    return calls[0] if len(calls) == 1 else {}


def stack_defaults(docs: Parsed) -> dict[str, Any]:
    """``{variable: default}`` of the stack module; a required variable maps to ``REQUIRED``."""
    return {name: body.get("default", REQUIRED) for path, doc in docs.items() if str(Path(path).parent) == STACK
            for entry in doc.get("variable", []) for name, body in entry.items()}


def effective_settings(docs: Parsed, root: str) -> dict[str, Any]:
    """What an environment runs with: its module arguments over the stack's defaults."""
    return {**stack_defaults(docs), **{k: v for k, v in stack_call(docs, root).items() if not k.startswith("__")}}


def rule_prod_settings(docs: Parsed) -> list[str]:
    settings = effective_settings(docs, "envs/prod")
    bad = [f"envs/prod: {key} must be {want}, is {settings.get(key)!r}"
           for key, want in PROD_SETTINGS.items() if settings.get(key) is not want]
    if len(settings.get("azs") or []) < 2:
        bad.append("envs/prod: needs at least two AZs")
    return bad


def rule_environments_hold_only_what_differs(docs: Parsed) -> list[str]:
    """Each env root: a backend, one aws provider, one ``module "stack"`` call that sets every
    required stack variable and restates no default, and outputs; nothing else (no variables,
    resources, data sources or other modules: those belong in modules/stack)."""
    bad, defaults = [], stack_defaults(docs)
    for root in ENV_ROOTS:
        files = {path: doc for path, doc in docs.items() if str(Path(path).parent) == root}
        for path, doc in files.items():
            extra = set(doc) - {"terraform", "provider", "module", "output", "__comments__"}
            if extra:
                bad.append(f"{path}: {sorted(extra)} belong in {STACK}, an env root only calls it")
        modules = [name for doc in files.values() for entry in doc.get("module", []) for name in entry]
        call = stack_call(docs, root)
        if modules != ["stack"] or call.get("source") != f"../../{STACK}":
            bad.append(f"{root}: must call exactly one module, stack (../../{STACK}), calls {modules}")
            continue
        args = {k: v for k, v in call.items() if k not in ("source",) and not k.startswith("__")}
        bad += [f"{root}: {k} is not a variable of {STACK}" for k in sorted(set(args) - set(defaults))]
        bad += [f"{root}: sets {k} = {v!r}, the stack's default: say only what differs"
                for k, v in sorted(args.items()) if defaults.get(k) == v]
        bad += [f"{root}: must set {k} (no default in {STACK})"
                for k, v in sorted(defaults.items()) if v is REQUIRED and k not in args]
    return bad


def rule_unique_final_snapshot(docs: Parsed) -> list[str]:
    """An RDS instance that keeps a final snapshot must name it per instance: a fixed name is
    taken by the first destroy's snapshot and makes every later destroy of the environment fail."""
    bad = []
    for path, type_, name, body in blocks(docs, "resource"):
        if type_ != "aws_db_instance" or body.get("skip_final_snapshot") is True:
            continue
        ident = str(body.get("final_snapshot_identifier", ""))
        ignored = [i for lc in body.get("lifecycle", []) for i in lc.get("ignore_changes", [])]
        if not re.search(r"plantimestamp\(\)|random_\w+\.", ident):
            bad.append(f"{path}: {type_}.{name} final_snapshot_identifier {ident!r} is the same for every instance")
        elif "plantimestamp()" in ident and "final_snapshot_identifier" not in ignored:
            bad.append(f"{path}: {type_}.{name} must ignore_changes its timestamped final_snapshot_identifier")
    return bad


def rule_pinned_charts(docs: Parsed) -> list[str]:
    """Every helm_release: an https repository and an exact chart version (via a variable default)."""
    defaults = {name: body.get("default") for doc in docs.values() for entry in doc.get("variable", [])
                for name, body in entry.items()}
    bad = []
    for path, type_, name, body in blocks(docs, "resource"):
        if type_ != "helm_release":
            continue
        if not str(body.get("repository", "")).startswith("https://"):
            bad.append(f"{path}: helm_release.{name} repository must be an https URL")
        version = str(body.get("version", ""))
        ref = re.fullmatch(r"\$\{var\.(\w+)\}", version)
        version = str(defaults.get(ref.group(1))) if ref else version
        if not re.fullmatch(r"\d+\.\d+\.\d+", version):
            bad.append(f"{path}: helm_release.{name} chart version {version!r} is not pinned exactly")
    return bad


RULES = [rule_pinned_versions, rule_local_modules, rule_no_wildcard_iam, rule_required_tags, rule_encryption,
         rule_no_passwords, rule_locked_backends, rule_prod_settings, rule_pinned_charts,
         rule_environments_hold_only_what_differs, rule_unique_final_snapshot]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_project_rule_holds(parsed: Parsed, rule) -> None:
    violations = rule(parsed)
    assert not violations, "\n".join(violations)


def test_every_module_and_root_was_parsed(parsed: Parsed) -> None:
    folders = set(module_dirs(parsed))
    expected = {f"modules/{m}" for m in ("network", "eks", "storage", "mlflow-db", "iam", "kms", "stack")}
    assert expected | set(ENV_ROOTS) | {"platform"} <= folders, sorted(folders)


def test_platform_values_templates_render(parsed: Parsed) -> None:
    """templatefile() is only evaluated at plan time, which CI cannot reach for the platform root
    (no helm/kubernetes providers offline): check every values file exists, gets exactly the
    variables it uses, and renders to a YAML mapping."""
    import yaml

    calls = []
    for path, type_, name, body in blocks(parsed, "resource"):
        for value in body.get("values", []) if type_ == "helm_release" else []:
            match = re.search(r'(templatefile|file)\("\$\{path\.module\}/([^"]+)"(?:, \{(.*)\})?\)', value)
            assert match, f"{path}: helm_release.{name} values must come from a file under platform/values: {value!r}"
            calls.append((name, match.group(1), TF_ROOT / Path(path).parent / match.group(2),
                          set(re.findall(r"(\w+)\s*=", match.group(3) or ""))))
    assert len(calls) >= 5, calls
    for name, func, template, passed in calls:
        text = template.read_text()
        used = set(re.findall(r"\$\{(\w+)\}", text))
        if func == "file":  # a plain file() would hand "${...}" to Helm verbatim
            assert not used, f"{name}: {template.name} has placeholders but is read with file()"
        assert used == passed, f"{name}: {template.name} uses {sorted(used)}, releases.tf passes {sorted(passed)}"
        rendered = re.sub(r"\$\{(\w+)\}", lambda m: "false" if m.group(1).startswith("enable_") else f"example-{m.group(1)}", text)
        assert isinstance(yaml.safe_load(rendered), dict), f"{template} does not render to a mapping"


def test_every_bucket_denies_any_call_without_tls(parsed: Parsed) -> None:
    """The storage module's bucket policy: Deny s3:* on the bucket and its objects when
    aws:SecureTransport is false (a short action list left the rest of S3 open over HTTP)."""
    docs = {path: doc for path, doc in parsed.items() if path.startswith("modules/storage/")}
    policies = [body for _, type_, name, body in blocks(docs, "data")
                if type_ == "aws_iam_policy_document" and name == "tls_only"]
    assert len(policies) == 1
    [stmt] = [s for s in statements(policies[0]) if s.get("sid") == "DenyInsecureTransport"]
    assert stmt["effect"] == "Deny"
    assert as_list(stmt["actions"]) == ["s3:*"]
    resources = " ".join(map(str, as_list(stmt["resources"])))
    assert ".arn}" in resources and ".arn}/*" in resources, resources
    [cond] = stmt["condition"]
    assert (cond["variable"], as_list(cond["values"])) == ("aws:SecureTransport", ["false"]), cond
    bucket_policies = [body for _, type_, _, body in blocks(docs, "resource") if type_ == "aws_s3_bucket_policy"]
    assert bucket_policies and all("tls_only" in str(b.get("policy")) for b in bucket_policies)


def test_no_terraform_file_is_a_copy() -> None:
    """The environments used to be byte copies of each other; no two Terraform files may be."""
    seen: dict[str, Path] = {}
    for path in sorted(p for p in TF_ROOT.rglob("*") if p.suffix in (".tf", ".hcl") and ".terraform" not in p.parts):
        text = path.read_text()
        assert text not in seen, f"{path.relative_to(TF_ROOT)} is a copy of {seen[text].relative_to(TF_ROOT)}"
        seen[text] = path


def test_environments_differ_only_in_their_settings(parsed: Parsed) -> None:
    dev, prod = (effective_settings(parsed, root) for root in ENV_ROOTS)
    assert (dev["environment"], prod["environment"]) == ("dev", "prod")
    assert dev["vpc_cidr"] != prod["vpc_cidr"]
    assert len(prod["azs"]) == 3 and prod["db_deletion_protection"] and not dev["db_deletion_protection"]


# Snippets each rule must reject (parsed by the same python-hcl2 run as the real code).
BROKEN = {
    "rule_pinned_versions": 'terraform {\n  required_providers {\n    aws = { source = "hashicorp/aws", version = ">= 5.0" }\n  }\n}\n',
    "rule_local_modules": 'module "vpc" {\n  source  = "terraform-aws-modules/vpc/aws"\n  version = "~> 5.0"\n}\n',
    "rule_no_wildcard_iam": (
        'data "aws_iam_policy_document" "p" {\n  statement {\n    actions   = ["s3:*"]\n'
        '    resources = ["arn:aws:s3:::*"]\n  }\n}\n'),
    "rule_required_tags": (
        'provider "aws" {\n  default_tags {\n    tags = { Project = "x" }\n  }\n}\n'
        'resource "aws_s3_bucket" "b" {\n  bucket = "x"\n}\n'),
    "rule_encryption": (
        'resource "aws_s3_bucket" "b" {\n  bucket = "x"\n}\n'
        'resource "aws_s3_bucket_server_side_encryption_configuration" "b" {\n  bucket = aws_s3_bucket.b.id\n'
        '  rule {\n    apply_server_side_encryption_by_default {\n      sse_algorithm = "AES256"\n    }\n  }\n}\n'
        'resource "aws_db_instance" "d" {\n  engine = "postgres"\n  storage_encrypted = false\n}\n'),
    "rule_pinned_charts": (
        'resource "helm_release" "r" {\n  repository = "http://charts.example.com"\n  chart = "x"\n'
        '  version = ">= 1.0"\n}\n'),
    "rule_unique_final_snapshot": (
        'resource "aws_db_instance" "d" {\n  skip_final_snapshot = false\n'
        '  final_snapshot_identifier = "${var.name}-final"\n}\n'),
    "rule_no_passwords": (
        'variable "db_password" {\n  type = string\n}\n'
        'resource "aws_db_instance" "d" {\n  password = var.db_password\n}\n'),
}


@pytest.fixture(scope="module")
def broken_parsed(tmp_path_factory: pytest.TempPathFactory) -> Parsed:
    root = tmp_path_factory.mktemp("broken-tf")
    for rule, text in BROKEN.items():
        (root / rule).mkdir()
        (root / rule / "main.tf").write_text(text)
    code, docs = dump_hcl(root)
    assert code == 0, docs
    return docs


@pytest.mark.parametrize("rule", [r for r in RULES if r.__name__ in BROKEN], ids=lambda r: r.__name__)
def test_project_rule_rejects_broken_snippet(broken_parsed: Parsed, rule) -> None:
    mine = {path: doc for path, doc in broken_parsed.items() if path.startswith(rule.__name__ + "/")}
    assert mine and rule(mine), f"{rule.__name__} accepted {BROKEN[rule.__name__]!r}"


def test_environment_rules_reject_copies_and_unsafe_prod(parsed: Parsed) -> None:
    docs = copy.deepcopy(parsed)
    dev = docs["envs/dev/main.tf"]
    dev["variable"] = [{"region": {"type": "string"}}]  # the old copied variables.tf
    call = dev["module"][0]["stack"]
    call["kubernetes_version"] = stack_defaults(docs)["kubernetes_version"]  # a restated default
    del call["vpc_cidr"]
    bad = rule_environments_hold_only_what_differs(docs)
    assert len(bad) == 3 and {"variable", "kubernetes_version", "vpc_cidr"} <= set(" ".join(bad).replace("'", " ").split()), bad
    docs["envs/prod/main.tf"]["module"][0]["stack"]["db_multi_az"] = False
    assert rule_prod_settings(docs) == ["envs/prod: db_multi_az must be True, is False"]


def test_python_hcl2_reports_a_syntax_error(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text('resource "aws_s3_bucket" "b" {\n  bucket = "x"\n')
    code, docs = dump_hcl(tmp_path)
    assert code == 1 and "__error__" in docs["main.tf"]
