"""ONNX export with a parity check, TensorRT engine builds, latency, and the export directory.

- :mod:`.onnx`: the wrapper with the fixed I/O signature and the exporter call;
- :mod:`.parity`: onnxruntime vs eager, tolerances in one place;
- :mod:`.tensorrt`: engine build branching on the TensorRT major version;
- :mod:`.bench`: latency per format;
- :mod:`.artifacts`: the whole export, committed as a ``cocoseg.bundle`` directory.
"""

from .artifacts import export_bundle
from .onnx import IO_SIGNATURE, ExportError, ExportWrapper, export_onnx
from .parity import TOLERANCES, ParityError, check_parity
from .tensorrt import EngineBuildError, build_engine, tensorrt_status

__all__ = [
    "IO_SIGNATURE",
    "TOLERANCES",
    "EngineBuildError",
    "ExportError",
    "ExportWrapper",
    "ParityError",
    "build_engine",
    "check_parity",
    "export_bundle",
    "export_onnx",
    "tensorrt_status",
]
