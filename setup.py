"""Package discovery for the `hpcobs` namespace.

Metadata lives in pyproject.toml. This file only maps the design card's
top-level folders (`exporters/`, `slo/`) onto `hpcobs.exporters` and
`hpcobs.slo`, including every sub-package, so a new sub-package needs no edit.
"""

from setuptools import find_packages, setup


def _mapped(folder: str, namespace: str) -> list[str]:
    return [namespace] + [f"{namespace}.{sub}" for sub in find_packages(folder)]


setup(packages=_mapped("exporters", "hpcobs.exporters") + _mapped("slo", "hpcobs.slo"))
