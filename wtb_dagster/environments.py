"""Combo environments: the Python environment (a Ray `runtime_env`) a combo's variants declare.

A variant, or a whole workflow, may declare `env: {pip: [...]}` (or `uv: [...]`) with
`install_options`, `env_vars` and `py_modules`. A combo's environment is the union of what its
workflow and its chosen variants declare (`combine`); two of them that pin one package to
versions no single environment can hold, set one variable to two values, or ask for two
installers, are refused before anything runs, naming both. Combos whose environments are
equal (`Environment.key`) run on the same workers.

The environment is part of a combo's code version (`Environment.fingerprint`): a local wheel
counts by its name and content, so changing a pin, or rebuilding a wheel in place, makes the
combo stale. Nothing here imports Ray: the Ray executor turns an environment into a
`runtime_env` with `runtime_env()`; the local executor refuses combos that have one
(`refuse_local`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from wtb_dagster.config import EnvEntry, explain
from wtb_dagster.errors import ConfigError, ExecutionError

# Ray replaces its own defaults with the options given; these keep what they did.
_DEFAULT_OPTIONS = {
    "pip": ("--disable-pip-version-check", "--no-cache-dir"),
    "uv": ("--no-cache",),
}
_PATH_OPTIONS = ("--find-links", "-f")  # options whose value may be a path to resolve


class EnvConflictError(ConfigError):
    """Two declarations in one combo ask for what no single environment can hold."""


class EnvBuildError(ExecutionError):
    """A combo's environment could not be built; the message carries the installer's."""


@dataclass(frozen=True)
class Environment:
    """A combo environment: what goes into a Ray `runtime_env`, normalised and hashable.

    Paths (local wheels, `py_modules`, `--find-links` directories) are absolute. The empty
    environment (`not env`) is the driver's own.
    """

    installer: str | None = None
    packages: tuple[str, ...] = ()
    install_options: tuple[str, ...] = ()
    env_vars: tuple[tuple[str, str], ...] = ()
    py_modules: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.packages or self.env_vars or self.py_modules)

    def runtime_env(self, setup_timeout_s: float | None = None) -> dict[str, Any]:
        """The Ray `runtime_env` of this environment (`{}` for the driver's own)."""
        runtime: dict[str, Any] = {}
        if self.installer is not None and self.packages:
            options = [*self.install_options, *_DEFAULT_OPTIONS[self.installer]]
            option_key = f"{'pip' if self.installer == 'pip' else 'uv_pip'}_install_options"
            packages = [_pinned_wheel(p) if p.endswith(".whl") else p for p in self.packages]
            runtime[self.installer] = {"packages": packages, option_key: options}
        if self.env_vars:
            runtime["env_vars"] = dict(self.env_vars)
        if self.py_modules:
            # a directory is used in place (Ray's `local://`): tasks and actors may not
            # upload one, only `ray.init` may
            runtime["py_modules"] = [m if "://" in m else f"local://{m}" for m in self.py_modules]
        if runtime and setup_timeout_s is not None:
            runtime["config"] = {"setup_timeout_seconds": max(1, int(setup_timeout_s))}
        return runtime

    @property
    def key(self) -> str:
        """Equal for equal environments: combos with one key share workers."""
        text = json.dumps(self.runtime_env(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def fingerprint(self) -> str:
        """A hash of what the environment installs, for code versions: local files count by
        their name and content (not where they sit), so moving a checkout keeps it and
        rebuilding a wheel in place changes it."""
        material = {
            "installer": self.installer,
            "packages": [_content_id(p) if _is_path(p) else p for p in self.packages],
            "install_options": list(self.install_options),
            "env_vars": dict(self.env_vars),
            "py_modules": [p if "://" in p else _content_id(p) for p in self.py_modules],
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:12]

    def describe(self) -> str:
        """One line for people: `pip: wtbprobe-1.0-py3-none-any.whl; env_vars: MODE`.

        Variable values are left out: they may be keys.
        """
        if not self:
            return "driver's environment"
        parts = []
        if self.packages:
            shown = [Path(p).name if _is_path(p) else p for p in self.packages]
            parts.append(f"{self.installer}: {', '.join(shown)}")
        if self.install_options:
            parts.append(f"options: {' '.join(self.install_options)}")
        if self.env_vars:
            parts.append(f"env_vars: {', '.join(name for name, _ in self.env_vars)}")
        if self.py_modules:
            parts.append(f"py_modules: {', '.join(Path(p).name for p in self.py_modules)}")
        return "; ".join(parts)


DRIVER = Environment()


def parse_env(
    spec: Mapping[str, Any] | EnvEntry | Environment | None,
    where: str,
    base_dir: Path | None = None,
) -> Environment:
    """An `env:` declaration (a mapping as in `wtb.yaml`, or an `EnvEntry`) as an
    `Environment`; relative paths are from `base_dir` (default: the working directory).

    Raises `ConfigError` naming `where` for a bad shape or a requirement pip cannot read.
    """
    if spec is None:
        return DRIVER
    if isinstance(spec, Environment):
        return spec
    if not isinstance(spec, EnvEntry):
        try:
            spec = EnvEntry.model_validate(spec)
        except pydantic.ValidationError as exc:
            raise ConfigError(explain(exc, EnvEntry, f"{where}: env")) from None
    base = (base_dir or Path.cwd()).resolve()
    installer = "uv" if spec.uv is not None else ("pip" if spec.pip is not None else None)
    packages = tuple(
        _resolved_package(entry, base, f"{where}: env.{installer}")
        for entry in (spec.uv if spec.uv is not None else spec.pip or [])
    )
    if spec.install_options and installer is None:
        raise ConfigError(
            f"{where}: env.install_options are given but nothing is installed; add the "
            "packages under env.pip or env.uv, or leave the options out"
        )
    for name in spec.env_vars:
        if not name or "=" in name:
            raise ConfigError(f"{where}: env.env_vars: {name!r} is not a variable name")
    return Environment(
        installer=installer if packages else None,
        packages=packages,
        install_options=_resolved_options(spec.install_options, base),
        env_vars=tuple(sorted(spec.env_vars.items())),
        py_modules=tuple(
            _resolved_module(p, base, f"{where}: env.py_modules") for p in spec.py_modules
        ),
    )


@dataclass(frozen=True)
class _Pin:
    """What one declaration asks of one package."""

    name: str  # canonical
    text: str  # as declared
    specifier: SpecifierSet
    exact: Version | None  # the one version it allows, if it allows only one
    source: str | None  # a local file or URL it comes from, if any


def combine(declared: Iterable[tuple[str, Environment]], where: str) -> Environment:
    """The union of the environments declared by `(who, environment)` pairs — the workflow's
    and those of a combo's variants.

    Raises `EnvConflictError` naming both declarers when two pin one package to versions no
    environment can hold at once (or to two different files), set one variable to two
    values, use two installers, or give two different sets of installer options. Ranges that
    only the installer can judge (`>=1` and `<2`) are both kept; the installer says if they
    cannot be met.
    """
    parts = [(who, env) for who, env in declared if env]
    if not parts:
        return DRIVER
    if len(parts) == 1:
        return parts[0][1]
    installer: tuple[str, str] | None = None
    options: tuple[str, tuple[str, ...]] | None = None
    packages: list[str] = []
    pins: dict[str, tuple[str, _Pin]] = {}
    env_vars: dict[str, tuple[str, str]] = {}
    py_modules: list[str] = []
    for who, env in parts:
        if env.installer is not None:
            if installer is not None and installer[1] != env.installer:
                raise EnvConflictError(
                    f"{where}: {installer[0]} installs with {installer[1]} and {who} with "
                    f"{env.installer}; one environment is built by one installer: declare "
                    "both with the same one"
                )
            installer = installer or (who, env.installer)
            if options is not None and options[1] != env.install_options:
                raise EnvConflictError(
                    f"{where}: {options[0]} and {who} give different install_options "
                    f"({' '.join(options[1]) or 'none'} vs {' '.join(env.install_options) or 'none'}); "
                    "one environment is installed with one set: give both the same"
                )
            options = options or (who, env.install_options)
        for text in env.packages:
            pin = _pin(text)
            if pin is not None:
                if pin.name in pins:
                    _check_compatible(pins[pin.name], (who, pin), where)
                else:
                    pins[pin.name] = (who, pin)
            if text not in packages:
                packages.append(text)
        for name, value in env.env_vars:
            if name in env_vars and env_vars[name][1] != value:
                raise EnvConflictError(
                    f"{where}: {env_vars[name][0]} and {who} set environment variable {name} "
                    "to different values; a combo's workers have one environment: set it in "
                    "one place, or give the variables different names"
                )
            env_vars.setdefault(name, (who, value))
        py_modules += [module for module in env.py_modules if module not in py_modules]
    return Environment(
        installer=installer[1] if installer else None,
        packages=tuple(packages),
        install_options=options[1] if options else (),
        env_vars=tuple(sorted((name, value) for name, (_, value) in env_vars.items())),
        py_modules=tuple(py_modules),
    )


def group_by_env(workflow: Any, combos: Iterable[str]) -> list[tuple[Environment, list[str]]]:
    """`combos` grouped by equal environment (`Environment.key`): each group runs on workers
    of its own. The driver's environment comes first, then the others in `combos`' order."""
    groups: dict[str, tuple[Environment, list[str]]] = {}
    for combo in combos:
        env = workflow.combo_env(combo)
        groups.setdefault(env.key if env else "", (env, []))[1].append(combo)
    return sorted(groups.values(), key=lambda group: bool(group[0]))


def refuse_local(workflow: Any, combos: Iterable[str]) -> None:
    """Raise `ConfigError` if any of `combos` needs an environment of its own: the local
    executor runs every thread in this process's environment, so it would run them wrongly."""
    for combo in combos:
        env = workflow.combo_env(combo)
        if env:
            raise ConfigError(
                f"workflow {workflow.name!r}, combo {combo!r} needs its own environment "
                f"({env.describe()}); the local executor runs every combo in this process's "
                "environment and will not run it there: use `--executor ray` (or the "
                "executor resource with kind 'ray')"
            )


def installer_message(error: BaseException) -> str:
    """The installer's own words from Ray's runtime_env setup error: pip's / uv's error
    lines when the output has them, else the last lines of the output."""
    text = str(error)
    _, found, output = text.partition("Last 50 lines of stdout:")
    lines = [line.strip() for line in (output if found else text).splitlines() if line.strip()]
    marked = [
        line
        for line in lines
        if line.startswith(("ERROR:", "error:", "×", "╰─▶", "hint:")) or "No solution" in line
    ]
    return " | ".join(marked or lines[-5:])[:4000]


# -- helpers ----------------------------------------------------------------------------------


def _is_path(entry: str) -> bool:
    return entry.endswith((".whl", ".tar.gz", ".zip")) or entry.startswith(("/", ".", "~"))


def _resolved_path(entry: str, base: Path, where: str) -> str:
    path = Path(entry).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise ConfigError(f"{where}: {entry!r} does not exist (looked for {path})")
    return str(path.resolve())


def _resolved_module(entry: str, base: Path, where: str) -> str:
    if "://" in entry:
        return entry  # a URI Ray fetches (s3://, gs://, https://….zip, local://)
    resolved = _resolved_path(entry, base, where)
    if not Path(resolved).is_dir():
        raise ConfigError(
            f"{where}: {entry!r} is not a directory; py_modules are directories put on the "
            "workers' Python path (on every node of a cluster), or URIs; install a wheel "
            "with env.pip"
        )
    return resolved


def _resolved_package(entry: str, base: Path, where: str) -> str:
    if entry.startswith("-"):
        raise ConfigError(
            f"{where}: {entry!r} is an installer option, not a package; put options under "
            "env.install_options (e.g. [--no-index, --find-links, wheels/])"
        )
    if _is_path(entry):
        resolved = _resolved_path(entry, base, where)
        if resolved.endswith(".whl"):
            try:
                parse_wheel_filename(Path(resolved).name)
            except InvalidWheelFilename as exc:
                raise ConfigError(f"{where}: {entry!r} is not a wheel's file name: {exc}") from None
        return resolved
    try:
        Requirement(entry)
    except InvalidRequirement as exc:
        raise ConfigError(
            f"{where}: {entry!r} is not a requirement pip can read ({exc}); write it as "
            "'name==1.2', 'name>=1,<2', or a path to a local wheel"
        ) from None
    return entry


def _resolved_options(options: Iterable[str], base: Path) -> tuple[str, ...]:
    resolved: list[str] = []
    follows_path = False
    for option in options:
        if follows_path and not option.startswith("-") and "://" not in option:
            option = str((base / Path(option).expanduser()).resolve())
        elif option.startswith("--find-links=") and "://" not in option:
            value = option.partition("=")[2]
            option = f"--find-links={(base / Path(value).expanduser()).resolve()}"
        follows_path = option in _PATH_OPTIONS
        resolved.append(option)
    return tuple(resolved)


def _pin(text: str) -> _Pin | None:
    """What a package entry asks for; None for a path whose package name is unknown."""
    if _is_path(text):
        if not text.endswith(".whl"):
            return None  # a source tree or archive: its name is known only once built
        name, version, _, _ = parse_wheel_filename(Path(text).name)
        return _Pin(canonicalize_name(name), text, SpecifierSet(f"=={version}"), version, text)
    requirement = Requirement(text)
    exact = None
    for spec in requirement.specifier:
        if spec.operator in ("==", "===") and "*" not in spec.version:
            exact = Version(spec.version)
    return _Pin(
        canonicalize_name(requirement.name),
        text,
        requirement.specifier,
        exact,
        requirement.url,
    )


def _check_compatible(first: tuple[str, _Pin], second: tuple[str, _Pin], where: str) -> None:
    (who_a, a), (who_b, b) = first, second
    if a.text == b.text:
        return
    if a.source and b.source and a.source != b.source:
        clash = True  # two different files or URLs for one package
    else:  # an exact pin the other declaration does not allow
        clash = any(
            pin.exact is not None and not other.specifier.contains(pin.exact, prereleases=True)
            for pin, other in ((a, b), (b, a))
        )
    if clash:
        raise EnvConflictError(
            f"{where}: {who_a} and {who_b} pin {a.name} differently ({_shown(a.text)} vs "
            f"{_shown(b.text)}); one environment holds one version of a package: make the pins "
            "agree, or leave this combo out of the matrix (exclude:)"
        )


def _shown(text: str) -> str:
    return Path(text).name if _is_path(text) else text


def _pinned_wheel(path: str) -> str:
    """A local wheel as `name @ file:///…whl#sha256=…`: the installer checks the file is the
    one the code version was taken from, and Ray (which caches an environment by its text)
    builds a wheel rebuilt in place anew instead of serving the old one from its cache."""
    name = parse_wheel_filename(Path(path).name)[0]
    stat = Path(path).stat()
    return f"{name} @ {Path(path).as_uri()}#sha256={_sha256(path, stat.st_mtime_ns, stat.st_size)}"


@functools.lru_cache(maxsize=256)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    # (mtime, size) in the key: hashed again only when the file changed
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _content_id(path: str) -> str:
    """`name:sha256` of a file, or of a directory's files (`__pycache__` left out)."""
    target = Path(path)
    if not target.exists():
        return f"{target.name}:missing"
    files = (
        [target]
        if target.is_file()
        else sorted(p for p in target.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    )
    # (path, mtime, size) of every file as the cache key: hashed again only when one changed
    stamp = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    return f"{target.name}:{_digest(str(target.parent), stamp)}"


@functools.lru_cache(maxsize=256)
def _digest(parent: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for file, _, _ in stamp:
        digest.update(os.path.relpath(file, parent).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
