"""YAML text to a validated pydantic model: parsed once, within limits, every problem at its path and line.

Limits against hostile or careless files: a size cap, aliases that may not expand past a node count
(counted without expanding them), no self-referencing aliases, nesting depth, and no key given twice in
one mapping (YAML would silently keep the last).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

MAX_CONFIG_BYTES = 1024 * 1024
"""A configuration file larger than this is refused unread."""
MAX_YAML_NODES = 100_000
"""A document whose aliases expand to more nodes than this is refused."""

_M = TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path} (line {self.line})" if self.line is not None else self.path
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """A configuration that cannot be used; ``problems`` lists every one found."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the configuration:\n{lines}")


def _compose(text: str) -> yaml.Node | None:
    """The document's node graph, parsed once (the C parser where PyYAML has it)."""
    loader = _LOADER(text)
    try:
        node: yaml.Node | None = loader.get_single_node()
        return node
    finally:
        loader.dispose()


def _construct(root: yaml.Node) -> Any:
    loader = _LOADER("")
    try:
        return loader.construct_document(root)
    finally:
        loader.dispose()


_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@contextmanager
def _yaml_errors(source: str) -> Iterator[None]:
    try:
        yield
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(source, [ConfigProblem("(file)", line, f"not valid YAML: {e}")]) from e
    except RecursionError as e:
        raise ConfigError(source, [ConfigProblem("(file)", None, "not valid YAML: nested too deeply")]) from e


def _expanded_size(root: yaml.Node) -> int:
    """How many nodes the document has once every alias is expanded, counted without expanding them
    (capped just past the limit; a self-referencing alias counts as over it)."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # post-order without recursion: the nesting depth is the file's choice
        node, done = stack.pop()
        if done:
            visiting.discard(id(node))
            total = 1 + sum(sizes[id(c)] for c in _children(node))
            sizes[id(node)] = min(total, MAX_YAML_NODES + 1)
            continue
        if id(node) in sizes:
            continue
        if id(node) in visiting:
            return MAX_YAML_NODES + 1
        visiting.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _line_index(root: yaml.Node, problems: list[ConfigProblem]) -> dict[tuple[str | int, ...], int]:
    """Map every path in a YAML document to its 1-based line, so problems point at the file; note every
    key given twice in one mapping (YAML would silently keep the last)."""
    out: dict[tuple[str | int, ...], int] = {}
    stack: list[tuple[yaml.Node, tuple[str | int, ...]]] = [(root, ())]
    while stack:
        node, prefix = stack.pop()
        out.setdefault(prefix, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                k = key.value if isinstance(key, yaml.ScalarNode) else str(key)
                line = key.start_mark.line + 1
                if k in seen:
                    problems.append(
                        ConfigProblem(
                            _format_path((*prefix, k)), line, f"given twice (first on line {seen[k]})"
                        )
                    )
                seen.setdefault(k, line)
                out[(*prefix, k)] = line
                stack.append((value, (*prefix, k)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*prefix, n)) for n, item in enumerate(node.value))
    return out


def _format_path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def validate_yaml(
    text: str,
    source: str,
    model: type[_M],
    *,
    what: str = "the configuration",
    ignore_in_path: frozenset[str] = frozenset(),
) -> _M:
    """Parse YAML and validate it as ``model``; raise ConfigError listing every problem with its path and
    line in the file. ``ignore_in_path`` drops location parts that are not keys in the file (e.g. the tag
    names of a discriminated union)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(
            source, [ConfigProblem("(file)", None, f"larger than {MAX_CONFIG_BYTES // 1024} KiB")]
        )
    with _yaml_errors(source):
        root = _compose(text)
    if root is None:
        data: Any = {}
        lines: dict[tuple[str | int, ...], int] = {}
    else:
        if _expanded_size(root) > MAX_YAML_NODES:
            raise ConfigError(
                source,
                [ConfigProblem("(file)", None, f"YAML aliases expand to more than {MAX_YAML_NODES} nodes")],
            )
        duplicates: list[ConfigProblem] = []
        lines = _line_index(root, duplicates)
        if duplicates:
            raise ConfigError(source, duplicates)
        with _yaml_errors(source):
            data = _construct(root)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigProblem("(top level)", 1, f"{what} must be a YAML mapping")])
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(p for p in err["loc"] if isinstance(p, str | int))
            # pydantic appends validator names (e.g. "function-after[...]") to some locations
            clean = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ignore_in_path)))
            line = next((lines[clean[:n]] for n in range(len(clean), -1, -1) if clean[:n] in lines), None)
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(ConfigProblem(_format_path(clean), line, msg))
        raise ConfigError(source, problems) from e
