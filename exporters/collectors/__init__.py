"""The node daemon's collectors, one module per source (like node_exporter's `collector/`).

Each module defines `SPEC: CollectorSpec`. `discover()` finds them, so adding a collector
means adding one file here.
"""

from __future__ import annotations

import importlib
import pkgutil

from hpcobs.exporters.runtime.collector import CollectorSpec


def discover() -> list[CollectorSpec]:
    """Every `SPEC` of the modules in this package, sorted by collector name."""
    specs = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        spec = getattr(module, "SPEC", None)
        if isinstance(spec, CollectorSpec):
            specs.append(spec)
    return sorted(specs, key=lambda s: s.name)
