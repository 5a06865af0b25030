"""MLflow Model Registry: versions, champion/challenger aliases and the promotion gate.

- :mod:`.client`: tracking URI resolution and a fail-fast server/credential check;
- :mod:`.versions`: one export directory -> one registered version (all or nothing);
- :mod:`.gate`: ``challenger`` / ``champion`` aliases, the gate, promote, rollback;
- :mod:`.evidence`: the evidence rule (served artifact, per-class guard, paired bootstrap; docs/promotion.md);
- :mod:`.serving`: the pyfunc model (models from code, ONNX Runtime, no pickle).
"""

from .client import RegistryError, connect, download, mlflow_at
from .evidence import GatePolicy
from .gate import CHALLENGER, CHAMPION, GateDecision, alias_version, decide, promote, rollback, run_gate
from .versions import Registration, register_export, version_tags

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "GateDecision",
    "GatePolicy",
    "Registration",
    "RegistryError",
    "alias_version",
    "connect",
    "decide",
    "download",
    "mlflow_at",
    "promote",
    "register_export",
    "rollback",
    "run_gate",
    "version_tags",
]
