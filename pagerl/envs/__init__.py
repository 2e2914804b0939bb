"""Page simulators behind one gymnasium interface, chosen by name.

Usage::

    from pagerl.envs import make_env

    env = make_env("pagesim", sim=recipe.sim, seed=recipe.run.seed)   # or PageSimEnv.from_recipe(recipe)
    obs, info = env.reset(seed=0)                 # info["request"]: the Request
    action = env.action_space.sample()            # K distinct candidate indices
    obs, reward, terminated, truncated, info = env.step(action)
    info["clicks"], info["page"], info["expected"]  # sampled clicks, item ids, exact score
    env.score(info["request"], info["page"])       # the same exact score, without stepping

    import gymnasium
    env = gymnasium.make("pagerl/PageSim-v0", sim={"num_items": 120})

Modules: :mod:`~pagerl.envs.base` (the interface, :class:`PageEnv`, and its
action space), :mod:`~pagerl.envs.features` (the observation: what a prompt
shows, as arrays), :mod:`~pagerl.envs.registry` (names and gymnasium ids),
:mod:`~pagerl.envs.pagesim` (our simulator, ``pagesim``).
"""

from pagerl.envs.base import REWARDS, InvalidPageError, PageEnv, PageSpace
from pagerl.envs.features import FIELDS, VisibleFeatures
from pagerl.envs.pagesim import GYM_ID, PageSimEnv
from pagerl.envs.registry import ENVIRONMENTS, make_env, register_env

__all__ = [
    "ENVIRONMENTS",
    "FIELDS",
    "GYM_ID",
    "InvalidPageError",
    "PageEnv",
    "PageSimEnv",
    "PageSpace",
    "REWARDS",
    "VisibleFeatures",
    "make_env",
    "register_env",
]
