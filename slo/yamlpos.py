"""YAML documents with line numbers, so every spec problem can name its line.

`load_documents(text)` returns plain Python values, except that mappings are `PosDict` and
sequences `PosList`, which remember the line of the node, of each key and of each item.
Duplicate keys (which PyYAML silently lets the last one win) are remembered too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml


class PosDict(dict[str, Any]):
    """A mapping that knows its line and the line of each key."""

    line: int
    key_lines: dict[str, int]
    duplicates: list[tuple[str, int]]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class PosList(list[Any]):
    """A sequence that knows its line and each item's line."""

    line: int
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if 0 <= index < len(self.item_lines) else self.line


@dataclass(frozen=True)
class Document:
    value: Any
    line: int  # 1-based line where the document starts


class YAMLSyntaxError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def line_of(value: Any, default: int = 1) -> int:
    return int(getattr(value, "line", default))


def load_documents(text: str) -> list[Document]:
    """Every document of a (multi-document) YAML text, with positions."""
    docs: list[Document] = []
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # unprintable characters are refused up front
        position = getattr(exc, "position", 0)
        raise YAMLSyntaxError(text.count("\n", 0, position) + 1, str(exc).splitlines()[0]) from exc
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            docs.append(Document(_convert(loader, node, {}), node.start_mark.line + 1))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise YAMLSyntaxError(mark.line + 1 if mark is not None else 1, problem) from exc
    finally:
        loader.dispose()
    return docs


def _convert(loader: yaml.SafeLoader, node: yaml.Node, seen: dict[int, Any]) -> Any:
    if id(node) in seen:  # an alias of a node converted already
        return seen[id(node)]
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
        mapping = PosDict()
        mapping.line = line
        mapping.key_lines = {}
        mapping.duplicates = []
        seen[id(node)] = mapping
        for key_node, value_node in node.value:
            key = _convert(loader, key_node, seen)
            key = str(key) if not isinstance(key, str) else key
            key_line = key_node.start_mark.line + 1
            if key in mapping:
                mapping.duplicates.append((key, key_line))
            mapping[key] = _convert(loader, value_node, seen)
            mapping.key_lines[key] = key_line
        return mapping
    if isinstance(node, yaml.SequenceNode):
        seq = PosList()
        seq.line = line
        seq.item_lines = []
        seen[id(node)] = seq
        for item in node.value:
            seq.append(_convert(loader, item, seen))
            seq.item_lines.append(item.start_mark.line + 1)
        return seq
    value = loader.construct_object(node, deep=True)
    seen[id(node)] = value
    return value
