"""Named registries: how a recipe picks an implementation by name.

A recipe picks an advantage estimator, a loss aggregation, a KL controller, a
rollout backend, a weight-sync transport, ... by name.
Each choice is one entry of a :class:`Registry` (the recipe key it is chosen
by is the registry's key), added with :func:`register` and read back with
:func:`lookup`, so a new variant is one decorated function and no caller grows
an if-chain. Both fail loudly: a name registered twice would silently replace
an implementation, and a misspelt recipe value should list what exists.

Every registry is kept in an index by its key (:data:`REGISTRIES`, read with
:func:`registry_of`), and no two registries share a key. The recipe loader
checks each schema field marked with a registry key against the registry of
that key (:mod:`pagerl.config.checks`), so a recipe naming an entry that does
not exist fails at load, listing the valid names.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, TypeVar

T = TypeVar("T")


class Registry(Dict[str, Any]):
    """A dict of name -> implementation; ``key`` names it in errors (the recipe
    key that selects from it, or what it holds) and in :data:`REGISTRIES`.

    Raises ValueError when another registry already has ``key``: the loader
    could not tell which one a recipe key names.
    """

    def __init__(self, key: str) -> None:
        super().__init__()
        if key in REGISTRIES:
            raise ValueError(f"a registry with key {key!r} exists already ({REGISTRIES[key]!r}); "
                             "each registry needs its own key")
        self.key = key
        REGISTRIES[key] = self

    def __repr__(self) -> str:
        return f"Registry({self.key!r}: {sorted(self)})"


# Every Registry created so far, by key.
REGISTRIES: Dict[str, Registry] = {}


def registry_of(key: str) -> Optional[Registry]:
    """The registry with ``key``, or None while no module has created it."""
    return REGISTRIES.get(key)


def register(registry: Registry, name: str) -> Callable[[T], T]:
    """Decorator adding the decorated function or class to ``registry`` as ``name``.

    Raises ValueError when ``name`` is already taken: a second registration
    would replace the first without anyone noticing.
    """

    def add(obj: T) -> T:
        if name in registry:
            raise ValueError(
                f"{registry.key}: {name!r} is already registered (to {registry[name]!r}); "
                "pick another name"
            )
        registry[name] = obj
        return obj

    return add


def lookup(registry: Registry, name: str) -> Any:
    """The entry ``name`` of ``registry``; ValueError listing the valid names otherwise."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise ValueError(f"{registry.key}: unknown {name!r}; expected one of {sorted(registry)}") from None
