"""The RL stage: rollouts, rewards-to-advantages, policy updates and weight sync of the page policy."""

from typing import Any


def rl_seed(recipe: Any) -> int:
    """The seed of every random stream of the RL stage: ``run.seed``, moved by ``rl.seed``.

    ``run.seed`` also fixes the simulated world and the SFT and RM stages;
    ``rl.seed`` varies only RL's prompt order, sampling and initialisation,
    so seeds of one ablation (``pagerl ablate``) share their data, SFT policy
    and reward model. ``rl.seed: 0`` gives ``run.seed`` itself.
    """
    return int(recipe.run.seed) + 1_000_000 * int(recipe.rl.seed)
