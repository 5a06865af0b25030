"""cocoseg: YOLOv8-style instance segmentation on COCO-Seg at cluster scale.

Layers import downward only (``docs/architecture.md``; checked by ``lint-imports``, the
import-linter contracts in ``pyproject.toml``), top first; packages on one line are independent:

- ``cli``
- ``jobs``
- ``tune``, ``retrain``
- ``ingest``, ``engine``, ``export``, ``registry``
- ``batch``
- ``tracking``
- ``inference``
- ``loss``, ``metrics``, ``viz``
- ``config_checks``
- ``data``, ``model``, ``bundle``
- ``cluster``
- ``config``, ``structures``, ``storage``, ``utils``

The other contracts: nothing here imports ``pipelines`` (the jobs are thin wiring over this
library); ``loss`` never imports post-processing; ``ray`` is imported only by the modules that
meet the cluster (listed in ``pyproject.toml``); no ``torchvision`` and no Ultralytics code.
"""

__version__ = "0.1.0"
