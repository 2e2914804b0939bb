"""Environments by name: how a caller (or a recipe's ``env.name``) picks a page simulator.

Each entry is a factory (usually the environment class) called with keyword
arguments. :func:`register_env` also registers it with gymnasium under a
``pagerl/<Name>-v<k>`` id when given one, so ``gymnasium.make`` (and
libraries built on it, such as RLlib) can build it after ``import
pagerl.envs``. Both refuse a name that is taken: a second registration would
replace the first without anyone noticing. :data:`ENVIRONMENTS` is the registry
of the recipe key ``env.name``, which the recipe loader checks against it.
"""

from __future__ import annotations

from typing import Callable, Optional

import gymnasium

from pagerl.envs.base import PageEnv
from pagerl.registry import Registry, lookup, register

EnvFactory = Callable[..., PageEnv]

ENVIRONMENTS: Registry = Registry("env.name")


def register_env(name: str, factory: EnvFactory, gym_id: Optional[str] = None) -> EnvFactory:
    """Add ``factory`` to :data:`ENVIRONMENTS` as ``name`` (and to gymnasium as ``gym_id``).

    Raises ValueError when ``name`` or ``gym_id`` is already registered."""
    if gym_id is not None and gym_id in gymnasium.registry:
        raise ValueError(f"gymnasium id {gym_id!r} is already registered; pick another id for environment {name!r}")
    register(ENVIRONMENTS, name)(factory)
    if gym_id is not None:
        gymnasium.register(id=gym_id, entry_point=factory)
    return factory


def make_env(name: str, **kwargs) -> PageEnv:
    """A new environment ``name`` built with ``kwargs``; ValueError listing the known names otherwise."""
    return lookup(ENVIRONMENTS, name)(**kwargs)


def env_from_recipe(recipe, **kwargs) -> PageEnv:
    """The environment ``env.name`` of a recipe, built by its ``from_recipe`` (``pagesim`` from
    ``sim.*``, the others from their ``env.<name>`` section), its world fixed by ``run.seed``:
    the one the synth stage logs from, the ``simulator`` reward source scores with and the
    eval stage scores by."""
    name = str(recipe.env.name)
    if name not in ENVIRONMENTS:
        raise ValueError(f"env.name: expected one of {', '.join(sorted(ENVIRONMENTS))}, got {name!r}")
    factory = ENVIRONMENTS[name]
    if not hasattr(factory, "from_recipe"):
        raise ValueError(f"env.name: environment {name!r} cannot be built from a recipe (its factory has no from_recipe)")
    return factory.from_recipe(recipe, **kwargs)
