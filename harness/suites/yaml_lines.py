"""YAML loading that remembers where every key and value came from.

Schema errors are reported as ``file:line: key.path: message``; PyYAML's composed node tree has
the marks, so we build plain Python objects from it and keep a path -> line map beside them.
Duplicate keys, which YAML silently collapses, are errors here.
"""

from __future__ import annotations

from typing import Any

import yaml

Path_ = tuple[str | int, ...]


class SuiteError(ValueError):
    """A suite file is malformed; ``str()`` is one line per problem, each naming file and line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top>"


class LineMap:
    def __init__(self, filename: str, lines: dict[Path_, int]) -> None:
        self.filename = filename
        self._lines = lines

    def line(self, path: Path_) -> int:
        """Line of ``path``, or of its nearest recorded ancestor (a missing key's parent)."""
        for cut in range(len(path), -1, -1):
            if path[:cut] in self._lines:
                return self._lines[path[:cut]]
        return 1

    def problem(self, path: Path_, message: str) -> str:
        return f"{self.filename}:{self.line(path)}: {dotted(path)}: {message}"


MAX_VALUES = 100_000  # a suite is hundreds of values; past this, aliases are multiplying a document
MERGE = "tag:yaml.org,2002:merge"


def _where(filename: str, node: yaml.Node) -> str:
    return f"{filename}:{node.start_mark.line + 1}: <yaml>"


def _check_graph(root: yaml.Node, filename: str) -> None:
    """Refuse an alias that contains itself and aliases that expand past ``MAX_VALUES`` values, before
    anything walks the expanded tree (a 15-line file can expand to billions)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise SuiteError([f"{_where(filename, node)}: an alias refers to a node that contains it"])
        open_nodes.add(id(node))
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        total = 1 + sum(size(child) for child in children)
        open_nodes.discard(id(node))
        if total > MAX_VALUES:
            raise SuiteError([f"{_where(filename, node)}: aliases expand this document past {MAX_VALUES} values"])
        sizes[id(node)] = total
        return total

    size(root)


def load_yaml_with_lines(text: str, filename: str) -> tuple[Any, LineMap, list[str]]:
    """Data, where each piece came from, and duplicate keys (the last value wins, so validation goes on).
    Merge keys (``<<: *common``) work as in ``yaml.safe_load``; a key the mapping states itself overrides a
    merged one without being a duplicate."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(err, "problem", None) or str(err)
        raise SuiteError([f"{filename}:{line}: <yaml>: {problem}"]) from None
    if root is None:
        return None, LineMap(filename, {}), []
    _check_graph(root, filename)
    lines: dict[Path_, int] = {}
    problems: list[str] = []
    constructor = yaml.SafeLoader("")

    def mapping(node: yaml.MappingNode, path: Path_) -> dict[Any, Any]:
        own = len([k for k, _ in node.value if k.tag != MERGE])
        try:
            constructor.flatten_mapping(node)  # merged pairs first, the mapping's own after them
        except yaml.constructor.ConstructorError as err:
            mark = err.problem_mark or node.start_mark
            raise SuiteError([f"{filename}:{mark.line + 1}: {dotted(path)}: {err.problem}"]) from None
        merged = len(node.value) - own
        out: dict[Any, Any] = {}
        stated: set[Any] = set()
        for index, (key_node, value_node) in enumerate(node.value):
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(f"{filename}:{line}: {dotted(path)}: a key must be a plain value, not a {key_node.id}")
                continue
            key = constructor.construct_object(key_node)
            if index >= merged:
                if key in stated:
                    problems.append(f"{filename}:{line}: {dotted((*path, key))}: duplicate key")
                stated.add(key)
            lines[(*path, key)] = line
            out[key] = build(value_node, (*path, key))
        return out

    def build(node: yaml.Node, path: Path_) -> Any:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [build(item, (*path, i)) for i, item in enumerate(node.value)]
        return constructor.construct_object(node)

    return build(root, ()), LineMap(filename, lines), problems
