"""Name -> class registries for losses, miners, models and datasets (timm-style).

A component registers itself with a decorator::

    @LOSSES.register("triplet")
    class TripletMarginLoss(TripletLoss): ...

and is built by name with ``LOSSES.create("triplet", margin=0.1)``. ``None`` kwargs are dropped so
each component keeps its own defaults, an unknown name fails listing the names that exist, and an
unknown keyword fails listing the keywords the component takes.

Besides registered names, ``package.module:ClassName`` imports a user's own class: that is how a new
loss or miner enters a study without touching this package.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
import warnings
from typing import Any, Callable, Iterator

from .errors import ConfigError, UnknownNameError


def is_import_path(name: str) -> bool:
    """True for ``package.module:Name`` references to a user's class."""
    return isinstance(name, str) and ":" in name


USER_PATH_ENV = "DMLBENCH_USER_PATH"


def search_user_paths() -> None:
    """Put the folders of ``DMLBENCH_USER_PATH`` (the command's working directory, by default) at the
    END of sys.path: a user's module is found there, but never in place of an installed package."""
    for folder in os.environ.get(USER_PATH_ENV, "").split(os.pathsep):
        if folder and folder not in sys.path:
            sys.path.append(folder)


def import_object(path: str) -> Any:
    """Import ``package.module:Name`` (the attribute may be dotted: ``mod:Outer.Inner``)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"import path {path!r} must look like 'package.module:ClassName'")
    search_user_paths()
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"cannot import module {module_name!r} of {path!r}: {error}") from error
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r} (from {path!r})") from None
    return obj


class Registry:
    """A named collection of components of one kind (``"loss"``, ``"miner"``, ...)."""

    def __init__(self, kind: str, base: type | None = None):
        self.kind = kind
        self.base = base
        self._entries: dict[str, type] = {}
        self._prefixes: dict[str, Callable[[str], type]] = {}

    def add_prefix(self, prefix: str, resolve: Callable[[str], type]) -> None:
        """Names ``prefix:Rest`` are resolved by ``resolve("Rest")`` (e.g. ``pml:TripletMarginLoss``)."""
        self._prefixes[prefix] = resolve

    def register(self, name: str) -> Callable[[type], type]:
        def decorator(cls: type) -> type:
            if name in self._entries and self._entries[name] is not cls:
                warnings.warn(f"{self.kind} {name!r} registered twice; the later one wins", stacklevel=2)
            self._entries[name] = cls
            cls.registry_name = name
            return cls

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def unknown(self, name: object) -> UnknownNameError:
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return UnknownNameError(
            f"unknown {self.kind} {name!r}{hint}; valid {self.kind} names: {', '.join(self.names())}, "
            f"or an import path 'package.module:ClassName'"
        )

    def get(self, name: str) -> type:
        """The class registered as ``name``, or imported from ``package.module:Name``."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{self.kind} name must be a non-empty string, got {name!r}; "
                              f"valid {self.kind} names: {', '.join(self.names())}")
        prefix, _, rest = name.partition(":")
        if prefix in self._prefixes and rest:
            return self._prefixes[prefix](rest)
        if is_import_path(name):
            cls = import_object(name)
            if self.base is not None and not (inspect.isclass(cls) and issubclass(cls, self.base)):
                raise ConfigError(f"{name!r} is not a subclass of {self.base.__module__}.{self.base.__name__}, "
                                  f"which every {self.kind} must extend")
            return cls
        if name not in self._entries:
            raise self.unknown(name)
        return self._entries[name]

    def identity(self, name: str) -> int | str:
        """The component's version as a run's identity holds it: the version, with the source digest
        appended where the code is not the code recorded for that version (see :mod:`.sources`); 1 where
        ``name`` names nothing: such a run fails its validation before it could have results."""
        from .sources import identity_version

        try:
            cls = self.get(name)
        except ConfigError:
            return 1
        return identity_version(self.kind, name, cls)

    def check_kwargs(self, name: str, kwargs: dict[str, Any]) -> None:
        """Fail, naming the valid keywords, when ``kwargs`` holds one the component does not take."""
        cls = self.get(name)
        parameters = inspect.signature(cls.__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return
        valid = [p for p in parameters if p != "self"]
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise ConfigError(f"{self.kind} {name!r} takes no argument {', '.join(map(repr, unknown))}; "
                              f"its arguments are: {', '.join(valid) or '(none)'}")

    def create(self, name: str, /, **kwargs: Any) -> Any:  # positional-only: a component may take `name`
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        self.check_kwargs(name, kwargs)
        cls = self.get(name)
        try:
            return cls(**kwargs)
        except ConfigError:
            raise
        except (TypeError, ValueError) as error:  # a value of the wrong type or out of range, met in the constructor
            raise ConfigError(f"{self.kind} {name!r} rejects its arguments {kwargs!r}: {error}; "
                              f"its arguments and their defaults: {signature_text(cls)}") from None

    def describe(self) -> list[tuple[str, str]]:
        """(name, first docstring line) for every registered component."""
        rows = []
        for name in self.names():
            doc = inspect.getdoc(self._entries[name]) or ""
            rows.append((name, doc.splitlines()[0] if doc else ""))
        return rows


def signature_text(cls: type) -> str:
    """``margin=0.2, variant='all'``: a component's keyword arguments with their defaults."""
    parts = []
    for parameter in inspect.signature(cls.__init__).parameters.values():
        if parameter.name == "self" or parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        default = "" if parameter.default is inspect.Parameter.empty else f"={parameter.default!r}"
        parts.append(f"{parameter.name}{default}")
    return ", ".join(parts) or "(none)"
