"""Package discovery for the `hpcobs` namespace, and the probe's optional compiled loop.

Metadata lives in pyproject.toml. This file maps the design card's top-level folders
(`exporters/`, `slo/`) onto `hpcobs.exporters` and `hpcobs.slo`, including every
sub-package, so a new sub-package needs no edit.

`hpcobs.exporters.probe._timedloop` is a small C extension (no MPI headers, no libmpi link:
see its source) that times the probe's MPI calls without the interpreter between them. It is
optional: where no C compiler is found the install goes on without it and the probe times
its calls in Python (`hpcobs-mpi-probe --timer python`).
"""

from setuptools import Extension, find_packages, setup


def _mapped(folder: str, namespace: str) -> list[str]:
    return [namespace] + [f"{namespace}.{sub}" for sub in find_packages(folder)]


setup(
    packages=_mapped("exporters", "hpcobs.exporters") + _mapped("slo", "hpcobs.slo"),
    ext_modules=[
        Extension(
            "hpcobs.exporters.probe._timedloop",
            sources=["exporters/probe/_timedloop.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
            optional=True,
        )
    ],
)
