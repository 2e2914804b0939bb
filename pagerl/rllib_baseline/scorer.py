"""The RLlib module of the baseline's ``rllib.model: candidate``: one small MLP scores every candidate.

Imported only where RLlib is (training, loading a saved policy): it subclasses RLlib's ``TorchRLModule``.

The flat observation of :class:`~pagerl.envs.scored.ScoredPageEnv` is N candidate rows of F features,
then R request features. The score of candidate j is ``MLP([x_j, mean_k x_k, request])``: the same
weights for every candidate (what makes a candidate good is the same wherever the prompt lists it), with
the mean over the request's candidates as context (how it compares with the others). Its action
distribution is RLlib's diagonal Gaussian over the N scores with one learned log standard deviation
shared by all candidates; the value function is an MLP over the whole flat observation.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn


def _mlp(width_in: int, hidden: List[int], width_out: int) -> nn.Sequential:
    layers: List[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(width_in, width), nn.Tanh()]
        width_in = width
    layers.append(nn.Linear(width_in, width_out))
    return nn.Sequential(*layers)


class CandidateScorerModule(TorchRLModule, ValueFunctionAPI):
    """``model_config``: ``num_candidates`` (N), ``request_width`` (R), ``hidden_sizes``."""

    def setup(self) -> None:
        cfg = self.model_config
        n, r = int(cfg["num_candidates"]), int(cfg["request_width"])
        size = int(self.observation_space.shape[0])
        if (size - r) % n:
            raise ValueError(f"observation of {size} features is not {n} candidate rows plus {r} request features")
        self.n, self.r, self.f = n, r, (size - r) // n
        hidden = [int(h) for h in cfg["hidden_sizes"]]
        self.scorer = _mlp(2 * self.f + r, hidden, 1)
        self.log_std = nn.Parameter(torch.zeros(1))
        self.vf = _mlp(size, hidden, 1)

    def _scores(self, obs: torch.Tensor) -> torch.Tensor:
        rows = obs[:, : self.n * self.f].reshape(-1, self.n, self.f)
        context = rows.mean(dim=1, keepdim=True).expand(-1, self.n, -1)
        request = obs[:, self.n * self.f :].unsqueeze(1).expand(-1, self.n, -1)
        return self.scorer(torch.cat([rows, context, request], dim=-1)).squeeze(-1)

    def _forward(self, batch: Dict[str, Any], **kwargs: Any) -> Dict[str, Any]:
        scores = self._scores(batch[Columns.OBS])
        return {Columns.ACTION_DIST_INPUTS: torch.cat([scores, self.log_std.expand_as(scores)], dim=-1)}

    def compute_values(self, batch: Dict[str, Any], embeddings: Optional[Any] = None) -> torch.Tensor:
        return self.vf(batch[Columns.OBS]).squeeze(-1)
