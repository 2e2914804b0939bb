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
    env = make_env("obp_slate", n_items=10, page_size=3)   # needs the optional extra: pip install 'pagerl[obp]'

Modules: :mod:`~pagerl.envs.base` (the interface, :class:`PageEnv`, and its
action space), :mod:`~pagerl.envs.features` (the observation: what a prompt
shows, as arrays), :mod:`~pagerl.envs.make` (names and gymnasium ids),
:mod:`~pagerl.envs.pagesim` (our simulator, ``pagesim``),
:mod:`~pagerl.envs.obp_slate` (Open Bandit Pipeline's synthetic slate bandit,
``obp_slate``). docs/environments.md describes both.
"""

from pagerl.envs.base import REWARDS, InvalidPageError, PageEnv, PageSpace
from pagerl.envs.features import FIELDS, VisibleFeatures
from pagerl.envs.make import ENVIRONMENTS, env_from_recipe, make_env, register_env

# Safe without obp: the module imports obp only when an ObpSlateEnv is built,
# and then raises an ImportError that says how to install it.
from pagerl.envs.obp_slate import ObpSlateEnv  # registers "obp_slate"
from pagerl.envs.pagesim import GYM_ID, PageSimEnv

__all__ = [
    "ENVIRONMENTS",
    "FIELDS",
    "GYM_ID",
    "InvalidPageError",
    "ObpSlateEnv",
    "PageEnv",
    "PageSimEnv",
    "PageSpace",
    "REWARDS",
    "VisibleFeatures",
    "env_from_recipe",
    "make_env",
    "register_env",
]
