"""Named registries: how a recipe picks an implementation by name.

A recipe picks an advantage estimator, a loss aggregation, a KL controller, a
rollout backend, a weight-sync transport, ... by name.
Each choice is one entry of a :class:`Registry` (the recipe key it is chosen
by is the registry's name), added with :func:`register` and read back with
:func:`lookup`, so a new variant is one decorated function and no caller grows
an if-chain. Both fail loudly: a name registered twice would silently replace
an implementation, and a misspelt recipe value should list what exists.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, TypeVar

T = TypeVar("T")


class Registry(Dict[str, Any]):
    """A dict of name -> implementation; ``key`` names it in errors (the recipe
    key that selects from it, or what it holds)."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    def __repr__(self) -> str:
        return f"Registry({self.key!r}: {sorted(self)})"


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
