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


def load_yaml_with_lines(text: str, filename: str) -> tuple[Any, LineMap, list[str]]:
    """Data, where each piece came from, and duplicate keys (the last value wins, so validation goes on)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(err, "problem", None) or str(err)
        raise SuiteError([f"{filename}:{line}: <yaml>: {problem}"]) from None
    lines: dict[Path_, int] = {}
    problems: list[str] = []
    constructor = yaml.SafeLoader("")

    def build(node: yaml.Node, path: Path_) -> Any:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node)
                if key in out:
                    problems.append(f"{filename}:{key_node.start_mark.line + 1}: {dotted((*path, key))}: duplicate key")
                lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = build(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(item, (*path, i)) for i, item in enumerate(node.value)]
        return constructor.construct_object(node)

    data = build(root, ()) if root is not None else None
    return data, LineMap(filename, lines), problems
