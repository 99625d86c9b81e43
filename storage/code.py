"""Code fingerprints: the project's own definitions a function reaches, normalised.

`code_parts(fn)` walks from `fn` through every name it uses to the module-level
definitions (functions, classes, assignments) of the project's modules that those
names resolve to, transitively, across `import` and `from … import` (function-level
imports included), and returns one digest per definition reached:
`{"fineflow.tasks.quality.judge": "3f…", …}`. A digest is of the definition's syntax
tree with docstrings and positions dropped, so comments, docstrings and formatting
never count, while any change of logic does. The cache key takes these digests, so a
stage reruns when the code it runs changes, and `--why` can name the definition.

What counts as the project: modules under `fineflow` (PROJECT). Left out on purpose:
`fineflow.config` (a config's effect on an output is its values, which the key holds
already; its field descriptions and validators are not a stage's code) and
`fineflow.progress` (progress lines and their throttle never change an output). A class
reached counts whole (every method), since an instance's methods run wherever the
instance goes. A module used as a value (not `module.name`) counts whole.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PROJECT = "fineflow"
NOT_CODE = frozenset({"fineflow.config", "fineflow.progress"})


@dataclass(frozen=True)
class _Module:
    name: str
    package: str  # what a relative import is relative to
    defs: dict[str, list[ast.stmt]]  # top-level name -> the statements that bind it
    imports: dict[str, tuple[str, str | None]]  # local name -> (module, attribute or None)
    tree: ast.Module  # docstrings dropped


def _ours(module: str, project: str) -> bool:
    return (module == project or module.startswith(project + ".")) and module not in NOT_CODE


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            first = body[0].value if body and isinstance(body[0], ast.Expr) else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _digest(node: ast.AST) -> str:
    return hashlib.sha256(ast.dump(node, include_attributes=False).encode()).hexdigest()[:16]


def _imports_in(node: ast.AST, package: str) -> dict[str, tuple[str, str | None]]:
    """Local name -> (module, attribute) for every import statement inside `node`."""
    out: dict[str, tuple[str, str | None]] = {}
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            for a in n.names:
                if a.asname:
                    out[a.asname] = (a.name, None)
                else:  # `import a.b` binds `a`
                    top = a.name.split(".")[0]
                    out[top] = (top, None)
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:  # relative: resolve against the importing package
                parts = package.split(".")[: len(package.split(".")) - n.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            for a in n.names:
                out[a.asname or a.name] = (base, a.name)
    return out


def _bound_names(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [stmt.name]
    targets: list[ast.expr] = []
    if isinstance(stmt, ast.Assign):
        targets = stmt.targets
    elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
        targets = [stmt.target]
    names = []
    for t in targets:
        names += [n.id for n in ast.walk(t) if isinstance(n, ast.Name)]
    return names


def _top_statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """Module-level statements, looking into `if`/`try` blocks (guarded definitions)."""
    out = []
    for stmt in body:
        if isinstance(stmt, ast.If):
            out += _top_statements(stmt.body) + _top_statements(stmt.orelse)
        elif isinstance(stmt, ast.Try):
            out += _top_statements(stmt.body)
            for h in stmt.handlers:
                out += _top_statements(h.body)
            out += _top_statements(stmt.orelse) + _top_statements(stmt.finalbody)
        else:
            out.append(stmt)
    return out


@cache
def _source_of(module: str, project: str = PROJECT) -> Path | None:
    """The file of a project module; None for anything else (never imports a library)."""
    if not _ours(module, project):
        return None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


@cache
def _module(name: str, project: str) -> _Module | None:
    """The parsed module, once per process: the code this process runs."""
    path = _source_of(name, project)
    if path is None:
        return None
    tree = _strip_docstrings(ast.parse(path.read_text(), str(path)))
    assert isinstance(tree, ast.Module)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    defs: dict[str, list[ast.stmt]] = {}
    imports: dict[str, tuple[str, str | None]] = {}
    for stmt in _top_statements(tree.body):
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            imports.update(_imports_in(stmt, package))
        for bound in _bound_names(stmt):
            defs.setdefault(bound, []).append(stmt)
    return _Module(name, package, defs, imports, tree)


def _references(node: ast.AST) -> tuple[set[str], set[tuple[str, str]], list[ast.AST]]:
    """Names used bare, `(name, attribute)` pairs (`module.function`, `Class.method`),
    and the import statements inside `node`."""
    attrs, bases, names, imports = set(), set(), [], []
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name):
            attrs.add((n.value.id, n.attr))
            bases.add(id(n.value))
        elif isinstance(n, ast.Name):
            names.append(n)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            imports.append(n)
    return {n.id for n in names if id(n) not in bases}, attrs, imports


def code_parts(fn: Callable, project: str = PROJECT) -> dict[str, str]:
    """`{"module.name": digest}` of every project definition `fn` reaches, `fn` included.
    `project`: the top-level package whose modules count (tests use their own)."""
    return dict(_walk(fn.__module__, fn.__qualname__.split(".")[0], project))


def forget() -> None:
    """Drop what was parsed (a test that edits a module between two calls)."""
    for f in (_source_of, _module, _walk, _definition):
        f.cache_clear()


@cache
def _walk(module: str, name: str, project: str) -> tuple[tuple[str, str], ...]:
    seen: dict[str, str] = {}
    visited: set[tuple[str, str | None]] = set()
    todo: list[tuple[str, str | None]] = [(module, name)]  # (module, None): all of it
    while todo:
        ref = todo.pop()
        if ref in visited or (found := _definition(*ref, project)) is None:
            continue
        visited.add(ref)
        digest, uses = found
        if digest:  # "" : a re-export or a submodule, counted where it points
            seen[ref[0] if ref[1] is None else f"{ref[0]}.{ref[1]}"] = digest
        todo += uses
    return tuple(sorted(seen.items()))


@cache
def _definition(
    mod_name: str, attr: str | None, project: str
) -> tuple[str, tuple[tuple[str, str | None], ...]] | None:
    """(digest, what it refers to) of one module-level name; None if it is not ours."""
    mod = _module(mod_name, project)
    if mod is None:
        return None
    if attr is None:
        return _digest(mod.tree), ()
    if attr not in mod.defs:
        if attr in mod.imports:  # re-exported: the definition is elsewhere
            return "", (_target(*mod.imports[attr], project),)
        if _source_of(f"{mod_name}.{attr}", project) is not None:  # a submodule used bare
            return "", ((f"{mod_name}.{attr}", None),)
        return None
    stmts = mod.defs[attr]
    uses: list[tuple[str, str | None]] = []
    for stmt in stmts:
        names, attrs, inner = _references(stmt)
        local = dict(mod.imports)
        for imp in inner:
            local.update(_imports_in(imp, mod.package))
        for n in names:
            if n in mod.defs:
                uses.append((mod_name, n))
            elif n in local:
                uses.append(_target(*local[n], project))
        for base, a in attrs:
            if base in mod.defs:
                uses.append((mod_name, base))
            elif base in local:
                m, x = local[base]
                full = m if x is None else f"{m}.{x}"
                ours = _source_of(full, project) is not None
                uses.append((full, a) if ours else _target(m, x, project))
    digest = _digest(ast.Module(body=list(stmts), type_ignores=[]))
    return digest, tuple(dict.fromkeys(uses))


def _target(module: str, attr: str | None, project: str) -> tuple[str, str | None]:
    """What `import module` (attr None) or `from module import attr` names."""
    if attr is None or _source_of(f"{module}.{attr}", project) is not None:
        return (module if attr is None else f"{module}.{attr}"), None
    return module, attr
