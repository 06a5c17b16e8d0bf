"""The generated RDMA sysfs trees (tests/data/rdma/sysfs_tree.py), loaded once per process.

tests/data is not a package, so the builder is loaded from its file and registered in
`sys.modules` (its dataclasses need their module there).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BUILDER = Path(__file__).resolve().parents[1] / "data" / "rdma" / "sysfs_tree.py"
_NAME = "rdma_sysfs_tree"


def tree_builder() -> ModuleType:
    loaded = sys.modules.get(_NAME)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(_NAME, BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    spec.loader.exec_module(module)
    return module
