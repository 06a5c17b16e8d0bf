"""YAML documents with line numbers, so every spec problem can name its line.

`load_documents(text)` returns plain Python values, except that mappings are `PosDict` and
sequences `PosList`, which remember the line of the node, of each key and of each item.
Duplicate keys (which PyYAML silently lets the last one win) are remembered too.

The values are built straight from the parser's events: no node graph of the whole
document is kept (PyYAML's composer holds one, with two position marks per scalar, which
cost about ten times the values themselves), so memory grows with the values only.
Anchors and aliases give shared values; merge keys (`<<: *base`, `<<: [*a, *b]`) copy the
merged mappings' keys first, earlier sources winning, then the mapping's own keys override
them (not a duplicate).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import ScalarNode

MERGE_TAG = "tag:yaml.org,2002:merge"
VALUE_TAG = "tag:yaml.org,2002:value"


class PosDict(dict[str, Any]):
    """A mapping that knows its line and the line of each key."""

    __slots__ = ("duplicates", "key_lines", "line")
    line: int
    key_lines: dict[str, int]
    duplicates: list[tuple[str, int]]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class PosList(list[Any]):
    """A sequence that knows its line and each item's line."""

    __slots__ = ("item_lines", "line")
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
    events: Any = loader  # PyYAML's stubs leave the event API untyped
    try:
        events.get_event()  # stream start
        while not events.check_event(StreamEndEvent):
            events.get_event()  # document start
            line = events.peek_event().start_mark.line + 1
            builder = _Builder(loader)
            value = builder.value(want_pairs=False).value
            if builder.error is not None:  # after the syntax errors of the document
                raise builder.error
            events.get_event()  # document end
            docs.append(Document(value, line))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise YAMLSyntaxError(mark.line + 1 if mark is not None else 1, problem) from exc
    except RecursionError:
        raise YAMLSyntaxError(1, "nested too deeply") from None
    finally:
        loader.dispose()
    return docs


@dataclass
class _Built:
    """A value, and what a merge key needs to know of it (kept only where it may be merged)."""

    value: Any
    kind: str  # "scalar", "sequence" or "mapping"
    mark: Any  # start mark, for errors
    tag: str = ""  # scalars: the resolved tag
    pairs: list[tuple[str, int, Any]] | None = None  # mappings: (key, line, value)
    items: list[_Built] | None = None  # sequences


class _Builder:
    """Builds one document's values from the parser's events."""

    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader: Any = loader  # PyYAML's stubs leave the event API untyped
        self.anchors: dict[str, _Built] = {}
        # the first value that cannot be constructed: raised once the document is parsed,
        # so that a syntax error anywhere in it is reported first (as PyYAML does)
        self.error: yaml.YAMLError | None = None

    def fail(self, error: yaml.YAMLError) -> None:
        if self.error is None:
            self.error = error

    def value(self, want_pairs: bool, key: bool = False) -> _Built:
        """The next node's value; `want_pairs` keeps what merging it needs."""
        loader = self.loader
        if loader.check_event(AliasEvent):
            event = loader.get_event()
            found = self.anchors.get(event.anchor)
            if found is None:
                raise ComposerError(
                    None, None, f"found undefined alias {event.anchor!r}", event.start_mark
                )
            return found
        event = loader.peek_event()
        anchor = event.anchor
        if anchor is not None and anchor in self.anchors:
            raise ComposerError(
                f"found duplicate anchor {anchor!r}; first occurrence",
                self.anchors[anchor].mark,
                "second occurrence",
                event.start_mark,
            )
        keep = want_pairs or anchor is not None  # an anchored value may be merged later
        if loader.check_event(ScalarEvent):
            built = self._scalar(loader.get_event(), key)
            if anchor is not None:
                self.anchors[anchor] = built
            return built
        if loader.check_event(SequenceStartEvent):
            return self._sequence(loader.get_event(), anchor, keep)
        if loader.check_event(MappingStartEvent):
            return self._mapping(loader.get_event(), anchor, keep)
        raise ComposerError(None, None, f"unexpected {event.id}", event.start_mark)

    def _scalar(self, event: Any, key: bool) -> _Built:
        loader = self.loader
        tag = event.tag
        if tag is None or tag == "!":
            tag = loader.resolve(ScalarNode, event.value, event.implicit)
        if key and tag in (MERGE_TAG, VALUE_TAG):  # `<<`: see _mapping; `=`: a plain key
            return _Built(event.value, "scalar", event.start_mark, tag)
        node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
        value = None
        try:
            value = loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.fail(exc)
        loader.constructed_objects.clear()  # PyYAML keeps every node here otherwise
        loader.recursive_objects.clear()
        return _Built(value, "scalar", event.start_mark, tag)

    def _sequence(self, start: Any, anchor: str | None, keep: bool) -> _Built:
        seq = PosList()
        seq.line = start.start_mark.line + 1
        seq.item_lines = []
        built = _Built(seq, "sequence", start.start_mark, items=[] if keep else None)
        if anchor is not None:
            self.anchors[anchor] = built
        loader = self.loader
        while not loader.check_event(SequenceEndEvent):
            line = loader.peek_event().start_mark.line + 1
            item = self.value(want_pairs=keep)
            seq.append(item.value)
            seq.item_lines.append(line)
            if built.items is not None:
                built.items.append(item)
        loader.get_event()
        return built

    def _mapping(self, start: Any, anchor: str | None, keep: bool) -> _Built:
        mapping = PosDict()
        mapping.line = start.start_mark.line + 1
        mapping.key_lines = {}
        mapping.duplicates = []
        built = _Built(mapping, "mapping", start.start_mark)
        if anchor is not None:
            self.anchors[anchor] = built
        loader = self.loader
        merged: list[tuple[str, int, Any]] = []
        while not loader.check_event(MappingEndEvent):
            key_line = loader.peek_event().start_mark.line + 1
            key_built = self.value(want_pairs=False, key=True)
            if key_built.kind == "scalar" and key_built.tag == MERGE_TAG:
                source = self.value(want_pairs=True)
                try:
                    merged.extend(self._merge_sources(start, source))
                except yaml.YAMLError as exc:
                    self.fail(exc)
                continue
            raw = key_built.value
            key = sys.intern(raw if isinstance(raw, str) else str(raw))  # keys repeat
            value = self.value(want_pairs=False).value
            if key in mapping:
                mapping.duplicates.append((key, key_line))
            mapping[key] = value
            mapping.key_lines[key] = key_line
        loader.get_event()
        if merged:
            explicit = list(mapping.items())
            lines = dict(mapping.key_lines)
            mapping.clear()
            mapping.key_lines.clear()
            for key, line, value in merged:
                if key not in mapping:  # the first source that has a key wins
                    mapping[key] = value
                    mapping.key_lines[key] = line
            for key, value in explicit:
                mapping[key] = value
                mapping.key_lines[key] = lines[key]
        if keep:  # what merging this mapping elsewhere copies: its keys as they ended up
            built.pairs = [(k, mapping.key_lines[k], v) for k, v in mapping.items()]
        return built

    def _merge_sources(self, start: Any, source: _Built) -> list[tuple[str, int, Any]]:
        """The (key, line, value) pairs that `<<: source` merges, in order."""
        if source.kind == "mapping":
            return self._pairs(start, source)
        if source.kind == "sequence" and source.items is not None:
            out: list[tuple[str, int, Any]] = []
            for item in source.items:
                if item.kind != "mapping":
                    raise ConstructorError(
                        "while constructing a mapping",
                        start.start_mark,
                        f"expected a mapping for merging, but found {item.kind}",
                        item.mark,
                    )
                out.extend(self._pairs(start, item))
            return out
        raise ConstructorError(
            "while constructing a mapping",
            start.start_mark,
            f"expected a mapping or list of mappings for merging, but found {source.kind}",
            source.mark,
        )

    @staticmethod
    def _pairs(start: Any, source: _Built) -> list[tuple[str, int, Any]]:
        if source.pairs is None:  # a mapping merged into itself, while being built
            raise ConstructorError(
                "while constructing a mapping",
                start.start_mark,
                "found a recursive merge",
                source.mark,
            )
        return source.pairs
