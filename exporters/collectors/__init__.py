"""The node daemon's collectors, one module per source (like node_exporter's `collector/`).

Each module defines `SPEC: CollectorSpec`. `discover()` finds them, so adding a collector
means adding one file here.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from hpcobs.exporters.runtime.collector import CollectorSpec


def modules() -> list[ModuleType]:
    """The modules of this package (imported)."""
    return [
        importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
    ]


def discover() -> list[CollectorSpec]:
    """Every `SPEC` of the modules in this package, sorted by collector name."""
    specs = [getattr(module, "SPEC", None) for module in modules()]
    return sorted((s for s in specs if isinstance(s, CollectorSpec)), key=lambda s: s.name)
