"""Render the Ray manifests in infra/k8s from one base and small per-manifest differences.

    python infra/tools/render_k8s.py           # (re)write infra/k8s/<file> for every entry of jobs.yaml
    python infra/tools/render_k8s.py --check   # exit 1 and name the files that differ from a fresh render

Sources (infra/k8s-src): ``ray.yaml`` is the base (pod and container defaults, the Ray cluster,
the RayJob spec), ``jobs.yaml`` says what each manifest adds (its header comment names the keys),
``retrain-launcher.yaml`` holds the retraining CronJob's native objects, copied as written.
The rendered files are committed so ``kubectl apply -f infra/k8s/<file>`` works without this
script; tests/test_infra_k8s.py fails while one is stale.

Merge rules (``merge``): mappings merge key by key; a list of mappings that all carry ``name``
(or ``groupName``) merges item by item on that key, new items appended; any other value, and
any other list, is replaced; ``null`` in the overlay deletes the key. Every pod template gets
``pod`` then its own spec; every container ``container`` then its own; Ray head and worker pods
and containers also ``ray_pod`` / ``ray_container`` in between.

Needs only PyYAML (the project's .venv, or any Python with it).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

INFRA = Path(__file__).resolve().parents[1]
SRC = INFRA / "k8s-src"
OUT = INFRA / "k8s"
LIST_KEYS = ("name", "groupName")
METADATA = {"namespace": "ray", "labels": {"app.kubernetes.io/name": "cocoseg-ray", "app.kubernetes.io/part-of": "cocoseg"}}


def _list_key(items: list[Any]) -> str | None:
    for key in LIST_KEYS:
        if items and all(isinstance(i, dict) and key in i for i in items):
            return key
    return None


def merge(base: Any, overlay: Any) -> Any:
    """``overlay`` over ``base`` by the rules in the module docstring; neither is modified."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        out = copy.deepcopy(base)
        for key, value in overlay.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = merge(out[key], value) if key in out else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(overlay, list):
        key = _list_key(base)
        if key is not None and _list_key(overlay) == key:
            out = copy.deepcopy(base)
            index = {item[key]: i for i, item in enumerate(out)}
            for item in overlay:
                if item[key] in index:
                    out[index[item[key]]] = merge(out[index[item[key]]], item)
                else:
                    out.append(copy.deepcopy(item))
            return out
    return copy.deepcopy(overlay)


def _named_first(item: dict[str, Any]) -> dict[str, Any]:
    """``name``/``groupName`` leads its mapping, as people write them."""
    first = [k for k in LIST_KEYS if k in item]
    return {**{k: item[k] for k in first}, **{k: v for k, v in item.items() if k not in first}}


def pod_template(base: dict[str, Any], template: dict[str, Any], ray: bool) -> dict[str, Any]:
    """A pod template with the pod and container defaults under its own settings."""
    pod, container = base["pod"], base["container"]
    if ray:
        pod, container = merge(pod, base["ray_pod"]), merge(container, base["ray_container"])
    spec = template["spec"]
    containers = [_named_first(merge(container, c)) for c in spec["containers"]]
    merged = merge(pod, {k: v for k, v in spec.items() if k != "containers"})
    volumes = merged.pop("volumes", None)
    merged["containers"] = containers
    if volumes:
        merged["volumes"] = volumes
    return {**template, "spec": merged}


def cluster_spec(base: dict[str, Any], overlay: dict[str, Any] | None) -> dict[str, Any]:
    cluster = merge(base["cluster"], overlay or {})
    head = cluster["headGroupSpec"]
    head["template"] = pod_template(base, head["template"], ray=True)
    cluster["workerGroupSpecs"] = [_named_first({**group, "template": pod_template(base, group["template"], ray=True)})
                                   for group in cluster["workerGroupSpecs"]]
    return cluster


def rayjob_spec(base: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    overlay = dict(entry.get("spec") or {})
    cluster = cluster_spec(base, overlay.pop("rayClusterSpec", None))
    spec = merge(base["job"], overlay)
    env = [{"name": name, "value": str(value)} for name, value in (entry.get("env") or {}).items()]
    submitter = spec["submitterPodTemplate"]
    if env:
        submitter = merge(submitter, {"spec": {"containers": [{"name": "ray-job-submitter", "env": env}]}})
    return {"entrypoint": " ".join(entry["entrypoint"].split()), **spec,
            "submitterPodTemplate": pod_template(base, submitter, ray=False), "rayClusterSpec": cluster}


def _object(kind: str, metadata: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "ray.io/v1", "kind": kind, "metadata": metadata, "spec": spec}


class _Dumper(yaml.SafeDumper):
    """Block style with indented lists, long lines kept whole, multi-line strings as ``|`` blocks."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def dump(*docs: dict[str, Any]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=10_000, default_flow_style=False)


def render_one(base: dict[str, Any], jobs: dict[str, Any], file: str, src: Path) -> str:
    entry = jobs[file]
    kind, name = entry["kind"], entry["name"]
    metadata = {"name": name, **copy.deepcopy(METADATA)}
    if kind == "RayCluster":
        body = dump(_object(kind, metadata, cluster_spec(base, entry.get("spec"))))
    elif kind == "RayJob":
        body = dump(_object(kind, metadata, rayjob_spec(base, entry)))
    elif kind == "RayCronJob":
        spec = {**entry["cron"], "jobTemplate": rayjob_spec(base, jobs[entry["job"]])}
        body = dump(_object(kind, metadata, spec))
    elif kind == "CronJob":
        template_meta = {"generateName": name, "namespace": METADATA["namespace"],
                         "labels": {**METADATA["labels"], "cocoseg.io/trigger": "schedule"}}
        template = dump(_object("RayJob", template_meta, rayjob_spec(base, jobs[entry["job"]])))
        config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": "cocoseg-retrain-rayjob", "namespace": METADATA["namespace"]},
                      "data": {"rayjob.yaml": template}}
        launcher = (src / entry["launcher"]).read_text()
        launcher = launcher[launcher.index("apiVersion:"):]  # its own header describes the source file
        body = launcher + "---\n" + dump(config_map)
    else:
        raise ValueError(f"{file}: unknown kind {kind!r}")
    header = ["# Rendered by infra/tools/render_k8s.py from infra/k8s-src: edit there, then `make infra-render`.",
              *(f"# {line}".rstrip() for line in entry["about"].rstrip("\n").splitlines())]
    return "\n".join(header) + "\n" + body


def render(src: Path = SRC) -> dict[str, str]:
    """``{file name in infra/k8s: its text}`` for every entry of ``jobs.yaml``."""
    base = yaml.safe_load((src / "ray.yaml").read_text())
    jobs = yaml.safe_load((src / "jobs.yaml").read_text())
    return {file: render_one(base, jobs, file, src) for file in jobs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report files that differ from a fresh render")
    parser.add_argument("--out", type=Path, default=OUT, help="where the manifests go (default: infra/k8s)")
    args = parser.parse_args(argv)
    stale = []
    for file, text in render().items():
        path = args.out / file
        if path.exists() and path.read_text() == text:
            continue
        stale.append(file)
        if not args.check:
            path.write_text(text)
    if args.check and stale:
        print(f"stale (run python infra/tools/render_k8s.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    print(f"{'stale' if args.check else 'written'}: {', '.join(stale) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
