"""Reaching Ray — a local Ray, or a cluster by address — within a deadline, and what workers
need from the driver to find its code and its checkpoints.

- `address` None starts (or reuses) a local Ray, unless `RAY_ADDRESS` is set, which Ray itself
  honours; "auto" attaches to the cluster `ray start` recorded; "host:6379" or
  "ray://host:10001" attach to that cluster. A cluster address must accept a TCP connection
  within `connect_timeout_s` (Ray itself would retry an unreachable address for minutes).
- Workers import `wtb_dagster` and the workflow's modules by name. On a local Ray each worker
  puts the driver's source directories (its working directory and the `sys.path` entries
  outside the Python installation) on its own `sys.path` before it unpickles the plan, so
  whatever the driver can import — a test module, a team's workflow package in its checkout —
  the workers can too, with nothing uploaded and no `runtime_env` (which would cost a fresh
  worker process). A cluster needs the code on its nodes: install it in the image, or pass a
  `runtime_env` (`working_dir`, `py_modules`, `pip`) in `init_options`.
- Workers may run in another directory: a relative SQLite checkpointer path is made absolute,
  and an in-process (memory) checkpointer is rejected.
"""

from __future__ import annotations

import math
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wtb_dagster.checkpoints import sqlite_path
from wtb_dagster.errors import ConfigError, ExecutionError


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ExecutionError(
            "the Ray executor needs Ray: pip install 'ray[default]' "
            f"(or use the local executor) — {exc}"
        ) from None
    return ray


def ray_target(address: str | None) -> tuple[str | None, str]:
    """The cluster address to attach to (None: a local Ray) and the setting it came from."""
    if address:
        return address, "address"
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return env, "RAY_ADDRESS"
    return None, "address"


def is_local(address: str | None, client_mode: bool) -> bool:
    """Whether the workers run on this machine (a local Ray, not a cluster or Ray Client)."""
    return ray_target(address)[0] in (None, "local") and not client_mode


@dataclass(frozen=True)
class Connection:
    started: bool  # this process's Ray was started by us: ours to shut down
    client_mode: bool  # attached through Ray Client: workers do not see the driver's files


def connect(
    address: str | None,
    init_options: dict[str, Any],
    *,
    started: bool,
    cpus_needed: float,
    connect_timeout_s: float,
) -> Connection:
    """Initialise Ray unless it already is; fails fast with `ExecutionError` if unreachable.

    `started` says whether an earlier `connect` of the same caller started the Ray that is
    running now (its `init_options` then apply to it); `cpus_needed` is what a local Ray must
    offer at least.
    """
    ray = import_ray()
    if ray.is_initialized():
        if init_options and not started:
            raise ConfigError(
                "RayExecutor: init_options are ray.init arguments, but Ray is already "
                "initialised in this process; drop them or set them where Ray is started"
            )
        from ray.util.client import ray as client

        return Connection(started=started, client_mode=bool(client.is_connected()))
    target, setting = ray_target(address)
    options: dict[str, Any] = {
        "include_dashboard": False,
        "ignore_reinit_error": True,
        "log_to_driver": False,
        **init_options,
    }
    resolved = None
    if target in (None, "local"):
        options.setdefault("num_cpus", max(os.cpu_count() or 1, math.ceil(cpus_needed)))
    else:
        resolved = probe(target, setting, connect_timeout_s)
    try:
        ray.init(address=resolved, **options)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {target!r} ({setting})" if target else "a local Ray"
        raise ExecutionError(f"cannot start or attach to {where}: {exc}") from exc
    return Connection(started=True, client_mode=bool(target and target.startswith("ray://")))


def probe(target: str, setting: str, connect_timeout_s: float) -> str:
    """Check that the cluster's port answers within `connect_timeout_s`; returns the address.

    Ray itself keeps retrying an unreachable address for minutes.
    """
    address = target
    if target == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address_or_die
        except ImportError:  # Ray moved its helper: let ray.init resolve "auto"
            return target
        try:
            address = canonicalize_bootstrap_address_or_die("auto")
        except ConnectionError as exc:
            raise ExecutionError(
                f"no running Ray cluster found for {setting}='auto': {exc}; start one with "
                "`ray start --head`, or leave the address empty for a local Ray"
            ) from None
    where = host_port(address)
    if where is None:
        raise ExecutionError(
            f"Ray address {target!r} (set by {setting}) is not 'host:port', "
            "'ray://host:port' or 'auto'"
        )
    try:
        with socket.create_connection(where, timeout=connect_timeout_s):
            pass
    except OSError as exc:
        raise ExecutionError(
            f"cannot reach the Ray cluster at {target!r} (set by {setting}): "
            f"{where[0]}:{where[1]} did not accept a connection within "
            f"connect_timeout_s={connect_timeout_s:g} s ({exc}); check the address, "
            "or leave `address` and RAY_ADDRESS empty for a local Ray"
        ) from None
    return address


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of "host:port" or "scheme://host:port"; None if it has no port."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def driver_paths() -> list[str]:
    """The driver's source directories: its cwd and `sys.path` entries outside Python itself."""
    installed = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    paths: list[str] = []
    for entry in [os.getcwd(), *sys.path]:
        path = Path(entry or os.getcwd()).resolve()
        if not path.is_dir() or any(path.is_relative_to(p) for p in installed):
            continue
        if str(path) not in paths:
            paths.append(str(path))
    return paths


def absolute_checkpoint_url(url: str) -> str:
    """Workers may run in another directory: a relative SQLite path is made absolute."""
    if url.startswith("memory://"):
        raise ConfigError(
            f"checkpointer {url!r} lives in one process, so Ray workers cannot share it; "
            "use sqlite:///path.db or postgresql://… with the Ray executor"
        )
    if url.startswith("sqlite:///"):
        return f"sqlite:///{sqlite_path(url).resolve()}"
    return url
