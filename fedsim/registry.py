"""Name -> implementation registries for strategies, client roles and tasks.

Built-ins are listed here as ``"module:attribute"`` strings and imported on
first use. Any installed distribution adds its own through the entry-point
groups ``fedsim.strategies``, ``fedsim.clients`` and ``fedsim.tasks``::

    [project.entry-points."fedsim.strategies"]
    my-strategy = "my_package.strategy:build"

or, in the same process, with ``registry.strategies.register("name", obj)``.

What each registry holds:

- strategies: a callable ``build(config: RunConfig) -> flwr.serverapp.strategy.Strategy``;
- client roles: a class whose instances handle the ClientApp's messages
  (see :class:`clients.local_train.LocalTrainRole`);
- tasks: a :class:`fedsim.tasks.Task` subclass.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any


class Registry:
    """A named collection of implementations with lazy imports and entry points.

    Parameters
    ----------
    kind : str
        Human-readable name of what is registered ("strategy", ...).
    group : str
        Entry-point group scanned for plug-ins.
    builtins : dict[str, str]
        Built-in names mapped to ``"module:attribute"`` import paths.
    """

    def __init__(self, kind: str, group: str, builtins: dict[str, str]) -> None:
        self.kind = kind
        self.group = group
        self._targets: dict[str, Any] = dict(builtins)
        self._plugins_loaded = False

    def register(self, name: str, obj: Any = None):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""
        if obj is None:
            return lambda o: self.register(name, o) or o
        self._targets[name] = obj
        return obj

    def names(self) -> list[str]:
        """All registered names, built-ins and installed plug-ins."""
        self._load_plugins()
        return sorted(self._targets)

    def get(self, name: str) -> Any:
        """Return the implementation registered as ``name``.

        Raises
        ------
        KeyError
            If no implementation has that name; the message lists the known names.
        """
        self._load_plugins()
        if name not in self._targets:
            raise KeyError(f"unknown {self.kind} '{name}'; known: {', '.join(sorted(self._targets))}")
        target = self._targets[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
            self._targets[name] = target
        elif hasattr(target, "load") and hasattr(target, "group"):  # an EntryPoint
            target = target.load()
            self._targets[name] = target
        return target

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.group):
            # fedsim's own distribution declares the built-ins again; keep the in-code ones.
            if ep.name not in self._targets:
                self._targets[ep.name] = ep


strategies = Registry(
    "strategy",
    "fedsim.strategies",
    {
        "clove": "strategies.clove:build",
        "fedavg": "strategies.fedavg:build",
        "ifca": "strategies.ifca:build",
        "local-only": "strategies.local_only:build",
        "bcd-qos": "strategies.bcd_qos:build",
        "fedavg-deploy": "strategies.deployment:build",
        "pathloss": "strategies.pathloss:build",
        "spg-mibo": "strategies.spg_mibo:build",
    },
)
client_roles = Registry(
    "client role",
    "fedsim.clients",
    {"local-train": "clients.local_train:LocalTrainRole", "qos-cell": "clients.qos_cell:QosCellRole",
     "lighttune": "clients.lighttune:LightTuneRole", "pathloss": "clients.pathloss:PathLossRole",
     "spg-mibo": "clients.spg_mibo:SPGMIBORole"},
)
tasks = Registry(
    "task",
    "fedsim.tasks",
    {
        "classification": "fedsim.tasks:ClassificationTask",
        "reconstruction": "fedsim.tasks:ReconstructionTask",
        "regression": "fedsim.tasks:RegressionTask",
        "qos": "fedsim.tasks:QosTask",
        "bler": "fedsim.tasks:BlerTask",
        "pathloss": "fedsim.tasks:PathLossTask",
        "mibo": "fedsim.tasks:MIBOTask",
    },
)
