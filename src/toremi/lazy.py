"""``torch = lazy("torch")``: a module that is imported at its first attribute access.

A config is validated before any stage work, so that a typo fails in a fraction of a second
(docs/ARCHITECTURE.md "Configs"). The modules that hold config dataclasses therefore import
without torch. The method modules register their options dataclass at import but need torch only
when a method runs; they bind ``torch`` (and ``rules``) through this proxy. Code that runs under
``torch.compile`` (``toremi.methods.rules``, the step) imports torch normally.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class LazyModule:
    __slots__ = ("_name", "_module")

    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_module", None)

    def load(self) -> ModuleType:
        if self._module is None:
            object.__setattr__(self, "_module", importlib.import_module(self._name))
        return self._module

    def __getattr__(self, attr: str):
        return getattr(self._module or self.load(), attr)

    def __setattr__(self, attr: str, value) -> None:  # monkeypatching reaches the real module
        setattr(self.load(), attr, value)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{' (loaded)' if self._module is not None else ''}>"


def lazy(name: str) -> LazyModule:
    return LazyModule(name)
