"""cocoseg: YOLOv8-style instance segmentation on COCO-Seg at cluster scale.

Layers import downward only (``../shared/docs/style.md``; checked by the import-linter contract
in ``pyproject.toml``):

- L3 ``engine``, ``export``, ``registry``, ``tracking``
- L2 ``loss``, ``metrics``
- L1 ``data``, ``model``
- L0 ``config``, ``structures``, ``storage``, ``utils``
"""

__version__ = "0.1.0"
