"""Problems found in spec files: file, line, message and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int
    severity: Severity
    message: str
    hint: str

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}: {self.severity}: {self.message}"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


@dataclass
class Problems:
    """Collects problems; parsing goes on after an error so that all of them are reported."""

    items: list[Problem] = field(default_factory=list)

    def error(self, file: str, line: int, message: str, hint: str) -> None:
        self.items.append(Problem(file, line, "error", message, hint))

    def warning(self, file: str, line: int, message: str, hint: str) -> None:
        self.items.append(Problem(file, line, "warning", message, hint))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "warning"]

    def sorted(self) -> list[Problem]:
        return sorted(self.items, key=lambda p: (p.file, p.line, p.severity, p.message))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean {close[0]!r}?" if close else ""
