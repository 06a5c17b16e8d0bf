"""Load spec files (hpcobs' format or OpenSLO) into validated SLOs, collecting every problem.

    loaded = load_specs(["slo/examples"])       # files or folders (*.yaml, *.yml)
    for problem in loaded.problems.sorted(): print(problem)
    if not loaded.problems.errors: use(loaded.slos)

Checks across files: SLO ids are unique; warnings for alerts that can never fire
(burn factor × (1 − objective) ≥ 1: the error ratio would have to exceed 100 %).

Bounded input (`Limits`): a file larger than `max_bytes` is refused before it is read, and
loading stops with an error once more than `max_slos` SLOs (after `expand`) are defined, so
memory stays proportional to what the limits allow (`--spec.max-bytes`, `--spec.max-slos`).
Files are read and parsed one at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

from hpcobs.slo.diagnostics import Problems
from hpcobs.slo.fields import Reader
from hpcobs.slo.model import SLO, decimal_text
from hpcobs.slo.openslo import OpenSLODoc, is_openslo, parse_openslo
from hpcobs.slo.spec import VERSION, parse_native
from hpcobs.slo.yamlpos import PosDict, YAMLSyntaxError, load_documents

SUFFIXES = (".yaml", ".yml")
DEFAULT_MAX_BYTES = 1 << 20  # 1 MiB per file: about 9,000 plainly written SLOs
DEFAULT_MAX_SLOS = 1000


@dataclass(frozen=True)
class Limits:
    """Bounds of the input: bytes per spec file, SLOs in all (after `expand`)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_slos: int = DEFAULT_MAX_SLOS

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_slos < 1:
            raise ValueError("--spec.max-bytes and --spec.max-slos must be positive")


@dataclass
class Loaded:
    slos: list[SLO] = field(default_factory=list)
    problems: Problems = field(default_factory=Problems)
    files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems.errors


def spec_files(paths: Iterable[str | Path], problems: Problems) -> list[Path]:
    """Files named, and the *.yaml / *.yml files of folders named (sorted)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
            if not found:
                problems.error(
                    str(path),
                    0,
                    "no *.yaml or *.yml files in this folder",
                    "name spec files *.yaml",
                )
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            problems.error(str(path), 0, "no such file or folder", "check the path")
    return out


def load_texts(texts: Iterable[tuple[str, str]], limits: Limits | None = None) -> Loaded:
    """Parse (file name, text) pairs; the core of `load_specs`, usable without files.

    `texts` is consumed lazily, one file at a time, and not beyond the SLO limit."""
    limits = limits or Limits()
    loaded = Loaded()
    problems = loaded.problems
    openslo_docs: list[OpenSLODoc] = []
    openslo_slos = 0  # OpenSLO documents of kind SLO, each one SLO at most
    for name, text in texts:
        loaded.files.append(name)
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        if size > limits.max_bytes:
            problems.error(name, 0, *_too_big(size, limits))
            continue
        r = Reader(name, problems)
        try:
            docs = load_documents(text)
        except YAMLSyntaxError as exc:
            r.error(
                exc.line,
                f"invalid YAML: {exc}",
                "fix the YAML syntax (indentation, quotes, colons)",
            )
            continue
        if not docs:
            r.error(1, "empty spec file", f"start with version: {VERSION}, or an OpenSLO document")
        for doc in docs:
            value = doc.value
            if value is None:
                continue
            if not isinstance(value, PosDict):
                r.error(
                    doc.line, "a spec document must be a mapping", f"start with version: {VERSION}"
                )
            elif is_openslo(value):
                openslo_docs.append(OpenSLODoc(value, r))
                openslo_slos += value.get("kind") == "SLO"
                if len(loaded.slos) + openslo_slos > limits.max_slos:
                    r.error(doc.line, *_too_many(limits))
                    return loaded
            elif "version" in value:
                room = limits.max_slos - len(loaded.slos) - openslo_slos
                r.max_slos = room
                slos = parse_native(value, r)  # stops after room + 1
                if len(slos) > room:
                    r.error(slos[room].line, *_too_many(limits))
                    return loaded
                loaded.slos.extend(slos)
            else:
                r.error(
                    value.line,
                    "neither an hpcobs spec (version:) nor an OpenSLO document (apiVersion:)",
                    f"start the document with version: {VERSION}",
                )
        del docs  # before the next file is read
    loaded.slos.extend(parse_openslo(openslo_docs))
    _check_unique(loaded)
    _warn_never_firing(loaded)
    return loaded


def load_specs(paths: Iterable[str | Path], limits: Limits | None = None) -> Loaded:
    limits = limits or Limits()
    problems = Problems()
    files = spec_files(paths, problems)
    tried: list[str] = []
    loaded = load_texts(_read(files, limits, problems, tried), limits)
    loaded.files = tried  # with those that could not be read
    loaded.problems.items[:0] = problems.items
    return loaded


def _read(
    files: Iterable[Path], limits: Limits, problems: Problems, tried: list[str]
) -> Iterator[tuple[str, str]]:
    """Each file's text, read when needed; one over `limits.max_bytes` is never read whole."""
    for path in files:
        tried.append(str(path))
        try:
            with path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                raw = b"" if size > limits.max_bytes else f.read(limits.max_bytes + 1)
            size = max(size, len(raw))  # a pipe or a growing file: what was read
            if size > limits.max_bytes:
                problems.error(str(path), 0, *_too_big(size, limits))
                continue
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.error(
                str(path), 0, f"cannot read: {exc}", "check the file's permissions and encoding"
            )
            continue
        del raw
        yield str(path), text


def _too_big(size: int, limits: Limits) -> tuple[str, str]:
    return (
        f"{size} bytes, more than the limit of {limits.max_bytes} (--spec.max-bytes)",
        "split the spec into several files, or raise --spec.max-bytes",
    )


def _too_many(limits: Limits) -> tuple[str, str]:
    return (
        f"more than {limits.max_slos} SLOs in all, the limit (--spec.max-slos); "
        "stopped reading here",
        "raise --spec.max-slos, or check expand: lists and folders for mistakes",
    )


def _check_unique(loaded: Loaded) -> None:
    first: dict[str, SLO] = {}
    unique = []
    for slo in loaded.slos:
        seen = first.get(slo.id)
        if seen is not None:
            loaded.problems.error(
                slo.file,
                slo.line,
                f"SLO id {slo.id!r} is already defined at {seen.file}:{seen.line}",
                "SLO ids must be unique across all spec files: rename one",
            )
            continue
        first[slo.id] = slo
        unique.append(slo)
    loaded.slos[:] = unique


def _warn_never_firing(loaded: Loaded) -> None:
    for slo in loaded.slos:
        for alert in slo.alert_defs():
            for cond in alert.conditions:
                limit = slo.threshold(cond)
                if limit >= 1:
                    best = decimal_text(
                        ((1 - 1 / cond.factor) * 100).quantize(Decimal("0.01"), ROUND_CEILING)
                    )
                    loaded.problems.warning(
                        slo.file,
                        slo.line,
                        f"SLO {slo.id!r}: {alert.alert} ({decimal_text(cond.factor)}× over "
                        f"{cond.long}) can never fire: {decimal_text(cond.factor)} × (1 − "
                        f"{decimal_text(slo.objective)}) = {decimal_text(limit)} ≥ 1",
                        f"raise the objective above {best} % or turn the alert off "
                        f"(alerting.{alert.severity}: false)",
                    )
