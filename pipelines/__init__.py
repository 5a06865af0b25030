"""The jobs: ``python -m pipelines.<job> --config pipelines/configs/<x>.yaml [key=value ...]``.

Each job is thin wiring over the library: its docstring holds the exact ``ray job submit`` line
and what it reads, writes and does on a rerun; ``run`` is the library function that does the
work; ``build_parser`` / ``main`` parse the command line with the job's one declaration
(``cocoseg/jobs/<job>.py``, which ``cocoseg <job>`` uses too). The library never imports this
package.
"""

from __future__ import annotations

from cocoseg.config import config_path

__all__ = ["config_path"]
