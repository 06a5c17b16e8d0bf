"""Load spec files (hpcobs' format or OpenSLO) into validated SLOs, collecting every problem.

    loaded = load_specs(["slo/examples"])       # files or folders (*.yaml, *.yml)
    for problem in loaded.problems.sorted(): print(problem)
    if not loaded.problems.errors: use(loaded.slos)

Checks across files: SLO ids are unique; warnings for alerts that can never fire
(burn factor × (1 − objective) ≥ 1: the error ratio would have to exceed 100 %).
"""

from __future__ import annotations

from collections.abc import Iterable
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


def load_texts(texts: Iterable[tuple[str, str]]) -> Loaded:
    """Parse (file name, text) pairs; the core of `load_specs`, usable without files."""
    loaded = Loaded()
    problems = loaded.problems
    openslo_docs: list[OpenSLODoc] = []
    for name, text in texts:
        loaded.files.append(name)
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
            elif "version" in value:
                loaded.slos.extend(parse_native(value, r))
            else:
                r.error(
                    value.line,
                    "neither an hpcobs spec (version:) nor an OpenSLO document (apiVersion:)",
                    f"start the document with version: {VERSION}",
                )
    loaded.slos.extend(parse_openslo(openslo_docs))
    _check_unique(loaded)
    _warn_never_firing(loaded)
    return loaded


def load_specs(paths: Iterable[str | Path]) -> Loaded:
    problems = Problems()
    files = spec_files(paths, problems)
    texts = []
    for path in files:
        try:
            texts.append((str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            problems.error(
                str(path), 0, f"cannot read: {exc}", "check the file's permissions and encoding"
            )
    loaded = load_texts(texts)
    loaded.problems.items[:0] = problems.items
    return loaded


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
