"""Code versions: a short hash of the code a workflow node reaches, not just its own source.

Stale detection compares these hashes across runs and processes, so an edit to anything the node
runs must change it, and nothing else may (no addresses, no hash-seed-dependent set order, no
runtime state). Starting at the node callable, the walk follows the names its code object uses
(nested code included: closures, lambdas, comprehensions), resolved in its module's globals:

* a function or class of the user's code -- the node's own top-level package, or any module not
  installed under the stdlib / site-packages paths, except the bench's own `wtb_dagster` (unless
  the node lives there) -- is hashed by source (bytecode when there is none) and walked in turn,
  with its closure cells and default arguments, a class with its methods and bases;
* a module of the user's code (`import mypkg.util as u; u.fn()`) is followed through every
  attribute name the code uses;
* an immutable module constant (number, string, tuple, frozenset, enum, regex, ...) is hashed
  by value; a mutable or opaque global (dict, list, an object) by the statement defining it,
  because its contents may be runtime state (caches, counters) that must not look like a change;
* anything else -- the stdlib, installed libraries, wtb_dagster -- by name and the installed
  distribution's version only, without recursing.

When unsure, this errs towards "changed": names that resolve to nothing are in the source or
bytecode anyway, and a whole unreadable object still counts by its type and name.
"""

from __future__ import annotations

import ast
import enum
import functools
import hashlib
import importlib.metadata
import importlib.util
import inspect
import linecache
import os
import re
import sys
import sysconfig
from typing import Any

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_MAX_REPR = 2000  # opaque reprs (partial arguments, bytecode constants) are cut here
_MAX_ITEMS = 100_000  # a larger constant counts as opaque: hashed by its defining statement


def code_version(fn: Any) -> str:
    """A short hash of the code `fn` reaches (see the module docstring for what that is)."""
    parts = reached_code(fn)
    return hashlib.sha256(repr(sorted(parts.items())).encode()).hexdigest()[:12]


def reached_code(fn: Any) -> dict[str, str]:
    """What `code_version` hashes: a description of each reached object -> its hashed text."""
    walk = _Walk(fn)
    walk.visit(fn)
    return walk.parts


class _Walk:
    def __init__(self, root: Any) -> None:
        home = _module_name(_innermost(root))
        if home in sys.modules and _installed(home):
            home = ""  # a library's callable (or compiled graph) as a node: named, not walked
        self.home_module = home
        self.home_package = home.partition(".")[0]
        self.parts: dict[str, str] = {}
        # Objects keep their id() only while alive, so the seen ones are held here.
        self._seen: dict[int, Any] = {}
        self._modules_seen: set[tuple[str, tuple[str, ...]]] = set()

    def add(self, key: str, text: str) -> None:
        # Distinct objects with the same name (a factory's closures) are all kept.
        n, unique = 1, key
        while unique in self.parts and self.parts[unique] != text:
            n += 1
            unique = f"{key} #{n}"
        self.parts[unique] = text

    def own(self, module_name: str) -> bool:
        top = module_name.partition(".")[0]
        if top == self.home_package or module_name == self.home_module:
            return True
        if top == "wtb_dagster":
            return False  # the bench's infrastructure, not the user's workflow code
        return not _installed(module_name)

    def visit(self, obj: Any) -> None:
        if id(obj) in self._seen:
            return
        self._seen[id(obj)] = obj
        if isinstance(obj, functools.partial):
            # bound arguments are part of the code's behaviour; the partial's repr holds an address
            self.visit(obj.func)
            bound = (obj.args, sorted(obj.keywords.items()))
            self.add(f"partial {_name(obj.func)}", _describe(bound, opaque=_safe_repr))
            for value in (*obj.args, *obj.keywords.values()):
                self.visit_callables_in(value)
        elif inspect.ismethod(obj):
            self.visit(obj.__func__)
            self.bound(f"self of {_name(obj.__func__)}", obj.__self__)
        elif callable(obj) and getattr(obj, "__wrapped__", None) is not None:
            self.visit(obj.__wrapped__)  # decorators, lru_cache: the wrapped function counts
            if inspect.isfunction(obj):
                self.function(obj)  # the wrapper itself, e.g. a decorator of the user's
        elif inspect.isfunction(obj):
            self.function(obj)
        elif inspect.isclass(obj):
            self.klass(obj)
        elif inspect.ismodule(obj):
            self.external(obj)
        elif callable(obj) and self.own(_module_name(type(obj))):
            self.visit(type(obj))  # a callable instance of the user's: by its class
        elif obj is not None:
            self.external(obj)
        if hasattr(obj, "get_graph") and hasattr(obj, "builder"):
            # a compiled LangGraph subgraph used as a node counts by the callables of its nodes
            for spec in getattr(obj.builder, "nodes", {}).values():
                runnable = getattr(spec, "runnable", None)
                self.visit(getattr(runnable, "func", None) or runnable)

    def function(self, fn: Any) -> None:
        # Where the code really lives: functools.wraps copies __module__ onto a library's wrapper.
        if not self.own(fn.__globals__.get("__name__", _module_name(fn))):
            self.external(fn)
            return
        code = fn.__code__
        self.add(f"function {_name(fn)}", _source(fn) or _code_text(code))
        for name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
            try:
                self.bound(f"closure {_name(fn)}.{name}", cell.cell_contents)
            except ValueError:
                continue  # a cell not filled yet
        defaults = (fn.__defaults__ or (), sorted((fn.__kwdefaults__ or {}).items()))
        if defaults != ((), []):
            self.bound(f"defaults {_name(fn)}", defaults)
        names = _names(code)
        for name in names:
            if name in fn.__globals__:
                self.reference(fn.__globals__, name, names)

    def klass(self, cls: type) -> None:
        if not self.own(_module_name(cls)):
            self.external(cls)
            return
        self.add(f"class {_name(cls)}", _source(cls) or repr(sorted(vars(cls))))
        for base in cls.__mro__[1:]:
            self.visit(base)
        for member in vars(cls).values():
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if isinstance(member, property):
                for accessor in (member.fget, member.fset, member.fdel):
                    self.visit(accessor)
            elif _has_file(inspect.unwrap(member)):
                # methods a decorator generated (dataclass __init__, ...) follow from the source
                self.visit(member)

    def module(self, module: Any, names: tuple[str, ...]) -> None:
        if not self.own(module.__name__):
            self.external(module)
            return
        # `u.fn()` compiles to the names `u` and `fn`: every attribute of a user module named
        # anywhere in the code is followed (a superset, so at worst something extra counts).
        if (module.__name__, names) in self._modules_seen:
            return
        self._modules_seen.add((module.__name__, names))
        for name in names:
            if name in vars(module):
                self.reference(vars(module), name, names)

    def reference(self, namespace: dict[str, Any], name: str, names: tuple[str, ...]) -> None:
        """A global `name` used by code whose module namespace is `namespace`."""
        value = namespace[name]
        where = f"{namespace.get('__name__', '?')}.{name}"
        if inspect.ismodule(value):
            self.module(value, names)
        elif _is_code(value):
            self.visit(value)
        elif (frozen := _frozen_repr(value)) is not None:
            self.add(f"constant {where}", frozen)
        elif f"global {where}" not in self.parts:
            statement, module, used = _defining_statement(namespace.get("__name__", ""), name)
            self.add(f"global {where}", f"{_name(type(value))} defined by: {statement}")
            self.visit(type(value))
            self.visit_callables_in(value)
            # what the defining statement reads, e.g. `PATTERNS = {"date": rf"{MONTHS} \d+"}`
            scope = vars(sys.modules[module]) if module in sys.modules else namespace
            for other in used:
                if other in scope and other != name:
                    self.reference(scope, other, names)

    def bound(self, key: str, value: Any) -> None:
        """A closure cell, default argument or bound instance: data by value, others by type."""
        self.visit_callables_in(value)
        if callable(value):
            self.add(key, _name(value))
        else:
            self.add(key, _describe(value, opaque=lambda v: _name(type(v))))
            self.visit(type(value))

    def visit_callables_in(self, value: Any, depth: int = 0) -> None:
        """Functions held in containers (a dispatch dict, a tuple of steps) are walked too."""
        if callable(value):
            self.visit(value)
        elif depth < 3 and isinstance(value, (tuple, list, set, frozenset, dict)):
            items = value.values() if isinstance(value, dict) else value
            for item in list(items)[:1000]:
                self.visit_callables_in(item, depth + 1)

    def external(self, obj: Any) -> None:
        module = obj.__name__ if inspect.ismodule(obj) else _module_name(obj)
        name = module if inspect.ismodule(obj) else _name(obj)
        self.add(f"uses {name}", _distribution_version(module.partition(".")[0]))


def _is_code(value: Any) -> bool:
    """Functions, classes, methods, partials and decorated functions (lru_cache, wraps)."""
    kinds = (functools.partial, type)
    return inspect.isroutine(value) or isinstance(value, kinds) or hasattr(value, "__wrapped__")


def _has_file(fn: Any) -> bool:
    return inspect.isfunction(fn) and not fn.__code__.co_filename.startswith("<")


def _innermost(obj: Any) -> Any:
    for _ in range(100):
        if isinstance(obj, functools.partial):
            obj = obj.func
        elif inspect.ismethod(obj):
            obj = obj.__func__
        elif callable(obj) and getattr(obj, "__wrapped__", None) is not None:
            obj = obj.__wrapped__
        else:
            break
    return obj


def _module_name(obj: Any) -> str:
    name = getattr(obj, "__module__", None)
    if not isinstance(name, str):
        name = type(obj).__module__
    return name


def _name(obj: Any) -> str:
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(qualname, str):
        qualname = type(obj).__qualname__
    return f"{_module_name(obj)}.{qualname}"


def _source(obj: Any) -> str | None:
    try:
        return inspect.getsource(obj)  # checks the file's mtime, so an edited file is reread
    except (OSError, TypeError):
        return None


def _names(code: Any) -> tuple[str, ...]:
    names = list(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names.extend(_names(const))
    return tuple(dict.fromkeys(names))


def _code_text(code: Any) -> str:
    consts = [
        _code_text(c) if inspect.iscode(c) else _describe(c, opaque=_safe_repr)
        for c in code.co_consts
    ]
    return f"{code.co_code.hex()} {code.co_names} {consts}"


def _safe_repr(value: Any) -> str:
    return _ADDRESS.sub("", repr(value))[:_MAX_REPR]


def _describe(value: Any, opaque: Any) -> str:
    frozen = _frozen_repr(value, mutable_ok=True)
    return frozen if frozen is not None else opaque(value)


def _frozen_repr(value: Any, mutable_ok: bool = False) -> str | None:
    """A process-independent repr of immutable data (sets sorted), or None if it is not that.

    With `mutable_ok`, lists and dicts of such data count too (bound arguments, defaults).
    """
    budget = [_MAX_ITEMS]

    def walk(v: Any, depth: int) -> str | None:
        budget[0] -= 1
        if budget[0] < 0 or depth > 20:
            return None
        if v is None or isinstance(v, (bool, int, float, complex, str, bytes, range)):
            return repr(v)
        if isinstance(v, enum.Enum):
            return f"{_name(type(v))}.{v.name}"
        if isinstance(v, re.Pattern):
            return f"re.compile({v.pattern!r}, {v.flags})"
        if isinstance(v, (tuple, frozenset)) or (mutable_ok and isinstance(v, (list, set))):
            items = [walk(item, depth + 1) for item in v]
            if None in items:
                return None
            if isinstance(v, (set, frozenset)):
                items.sort()
            return f"{type(v).__name__}({', '.join(items)})"  # type: ignore[arg-type]
        if mutable_ok and isinstance(v, dict):
            items = [(walk(k, depth + 1), walk(x, depth + 1)) for k, x in v.items()]
            if any(None in pair for pair in items):
                return None
            return "{" + ", ".join(f"{k}: {x}" for k, x in items) + "}"
        return None

    return walk(value, 0)


def _defining_statement(module_name: str, name: str) -> tuple[str, str, tuple[str, ...]]:
    """The top-level statements binding `name` in a module of the user's, the module that
    really defines it (`from .config import PARAMS` is followed) and the names they use."""
    text = ""
    for _ in range(10):  # bounded: a chain of re-exports
        module = sys.modules.get(module_name)
        file = getattr(module, "__file__", None)
        if not file or _installed_file(file):
            break
        linecache.checkcache(file)
        source = "".join(linecache.getlines(file, vars(module)))
        statement, used, origin = _bindings(source).get(name, ("", (), None))
        text = f"{text}\n{statement}".strip()
        if origin is None:
            return text, module_name, used
        try:
            module_name = importlib.util.resolve_name(origin[0], module.__package__)
        except (ImportError, ValueError):
            break
        name = origin[1]
    return text, module_name, ()


@functools.lru_cache(maxsize=64)
def _bindings(source: str) -> dict[str, tuple[str, tuple[str, ...], tuple[str, str] | None]]:
    """Per top-level name of a module's source: the statements binding it, the names they
    read, and for `from m import x as name` the (module, x) it comes from."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    found: dict[str, tuple[str, tuple[str, ...], tuple[str, str] | None]] = {}
    statements = list(tree.body)
    for statement in statements:
        if isinstance(statement, ast.If):
            statements.extend(statement.body + statement.orelse)
            continue
        if isinstance(statement, ast.Try):  # `try: from x import y` and the like
            statements.extend(statement.body + statement.orelse + statement.finalbody)
            statements.extend(s for handler in statement.handlers for s in handler.body)
            continue
        text = ast.get_source_segment(source, statement) or ""
        if isinstance(statement, ast.ImportFrom):
            module = "." * statement.level + (statement.module or "")
            for alias in statement.names:
                found[alias.asname or alias.name] = (text, (), (module, alias.name))
            continue
        if isinstance(statement, ast.Assign):
            targets = statement.targets
        elif isinstance(statement, (ast.AnnAssign, ast.AugAssign)):
            targets = [statement.target]
        else:
            continue
        used = tuple(n.id for n in ast.walk(statement) if isinstance(n, ast.Name))
        for target in (n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)):
            before = found.get(target, ("", (), None))[0]
            found[target] = (f"{before}\n{text}".strip(), used, None)
    return found


@functools.cache
def _install_roots() -> tuple[str, ...]:
    roots = set()
    for config in ({}, {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}):
        paths = sysconfig.get_paths(vars=config)
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            roots.add(os.path.realpath(paths[key]) + os.sep)
    return tuple(sorted(roots))


def _installed(module_name: str) -> bool:
    """Whether a module is the stdlib or an installed library (not the user's code)."""
    file = getattr(sys.modules.get(module_name), "__file__", None)
    return not file or _installed_file(file)  # builtin, frozen or unknown: named, never walked


@functools.lru_cache(maxsize=4096)
def _installed_file(file: str) -> bool:
    path = os.path.realpath(file)
    parts = set(path.split(os.sep))
    return path.startswith(_install_roots()) or bool(parts & {"site-packages", "dist-packages"})


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


@functools.cache
def _distribution_version(top_level: str) -> str:
    versions = []
    for dist in sorted(set(_distributions().get(top_level, []))):
        try:
            versions.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(dist)
    return ", ".join(versions)
