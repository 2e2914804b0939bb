"""KL divergence to the reference (SFT) policy: per-token estimators and the
controllers of its coefficient.

Estimators. The response tokens are sampled from the policy, so KL(pi || ref)
is estimated per token from the log-probabilities logp = log pi(a_t) and
ref = log ref(a_t) of the sampled token. With d = logp - ref:

    k1 = d                                   unbiased, high variance, can be < 0
    k2 = d^2 / 2                             biased, low variance, >= 0
    k3 = exp(ref - logp) - (ref - logp) - 1  unbiased, low variance, >= 0

(Schulman, "Approximating KL divergence", 2020.) Each is 0 outside ``mask``
(computed with ``torch.where``, so padding holding anything, even inf, gives
0). With ``rl.kl.mode = reward`` the algorithm adds the penalty
-coef * KL[b, t] to token t's reward (:func:`kl_penalty`); with ``loss`` it
adds coef * (aggregated KL) to the policy loss
(:func:`pagerl.rl.algorithms.losses.kl_loss`).

Controllers keep coef. ``fixed`` never changes it. ``adaptive`` is the
proportional controller of Ziegler et al. (2019): after a step that observed a
mean per-token KL of ``observed_kl`` over ``n`` samples,

    error = clip(observed_kl / target - 1, -0.2, 0.2)
    coef  <- coef * (1 + error * n / horizon)

so coef grows while the policy drifts beyond ``target`` and shrinks while it
stays closer, by at most 20% per ``horizon`` samples. ``n`` and ``horizon``
are in the same unit (the caller's choice: pages or steps). A controller's
state is ``{"controller": name, "value": coef}``: plain JSON for checkpoints.
"""

from __future__ import annotations

from typing import Callable, Dict, Mapping, Union

import torch

from pagerl.config.schema import KLConfig
from pagerl.registry import Registry, lookup, register
from pagerl.rl.algorithms.checks import require_shape

# (logprobs[B, T], ref_logprobs[B, T], mask[B, T]) -> KL[B, T]
KLEstimator = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
KL_ESTIMATORS = Registry("rl.kl.estimator")
KL_CONTROLLERS = Registry("rl.kl.controller")


def _masked_log_ratio(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor):
    """(logp - ref on the mask, 0 elsewhere; the mask as bool; a 0 of logprobs' dtype)."""
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs: expected [B, T], got shape {tuple(logprobs.shape)}")
    require_shape("ref_logprobs", ref_logprobs, logprobs.shape)
    require_shape("mask", mask, logprobs.shape)
    keep = mask.to(torch.bool)
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    return torch.where(keep, logprobs - ref_logprobs, zero), keep, zero


@register(KL_ESTIMATORS, "k1")
def k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """logp - ref per token."""
    return _masked_log_ratio(logprobs, ref_logprobs, mask)[0]


@register(KL_ESTIMATORS, "k2")
def k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(logp - ref)^2 / 2 per token."""
    d, keep, zero = _masked_log_ratio(logprobs, ref_logprobs, mask)
    return torch.where(keep, d * d / 2, zero)


@register(KL_ESTIMATORS, "k3")
def k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """exp(ref - logp) - (ref - logp) - 1 per token."""
    d, keep, zero = _masked_log_ratio(logprobs, ref_logprobs, mask)
    x = -d
    return torch.where(keep, torch.exp(x) - x - 1, zero)


def estimate_kl(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, estimator: str
) -> torch.Tensor:
    """Per-token KL[B, T] by the estimator named ``estimator`` (``rl.kl.estimator``)."""
    return lookup(KL_ESTIMATORS, estimator)(logprobs, ref_logprobs, mask)


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, estimator: str, coef: float
) -> torch.Tensor:
    """The reward-mode penalty -coef * KL[b, t] per token (0 outside ``mask``).

    This is the ``kl_penalty`` input of the advantage estimators; computed from
    the rollout's (old) logprobs, it is a constant of the update, not a gradient path.
    """
    return -coef * estimate_kl(logprobs, ref_logprobs, mask, estimator)


# ---------------------------------------------------------------- controllers


def _observed(observed_kl: Union[float, torch.Tensor]) -> float:
    value = float(observed_kl)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"observed_kl: expected a finite number, got {value}")
    return value


class _Controller:
    name = ""

    def __init__(self, coef: float) -> None:
        if coef < 0:
            raise ValueError(f"rl.kl.coef: expected >= 0, got {coef}")
        self.value = float(coef)

    def state_dict(self) -> Dict[str, Union[str, float]]:
        return {"controller": self.name, "value": float(self.value)}

    def load_state_dict(self, state: Mapping[str, Union[str, float]]) -> None:
        if "value" not in state:
            raise ValueError(f"KL controller state lacks 'value': got keys {sorted(state)}")
        if state.get("controller", self.name) != self.name:
            raise ValueError(
                f"KL controller state is of {state['controller']!r}, not {self.name!r} "
                "(rl.kl.controller changed since the checkpoint)"
            )
        self.value = float(state["value"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(value={self.value})"


@register(KL_CONTROLLERS, "fixed")
class FixedKLController(_Controller):
    """coef stays at its configured value; :meth:`update` only checks its input."""

    name = "fixed"

    @classmethod
    def from_config(cls, cfg: KLConfig) -> "FixedKLController":
        return cls(cfg.coef)

    def update(self, observed_kl: Union[float, torch.Tensor], n: int) -> float:
        _observed(observed_kl)
        return self.value


@register(KL_CONTROLLERS, "adaptive")
class AdaptiveKLController(_Controller):
    """coef <- coef * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)."""

    name = "adaptive"

    def __init__(self, coef: float, target: float, horizon: float) -> None:
        super().__init__(coef)
        if target <= 0:
            raise ValueError(f"rl.kl.target: expected > 0 for the adaptive controller, got {target}")
        if horizon <= 0:
            raise ValueError(f"rl.kl.horizon: expected > 0 for the adaptive controller, got {horizon}")
        self.target = float(target)
        self.horizon = float(horizon)

    @classmethod
    def from_config(cls, cfg: KLConfig) -> "AdaptiveKLController":
        return cls(cfg.coef, cfg.target, cfg.horizon)

    def update(self, observed_kl: Union[float, torch.Tensor], n: int) -> float:
        if n < 0:
            raise ValueError(f"n: expected the number of samples (>= 0), got {n}")
        error = min(max(_observed(observed_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n / self.horizon
        return self.value


def make_kl_controller(cfg: KLConfig) -> Union[FixedKLController, AdaptiveKLController]:
    """The controller named by ``rl.kl.controller``, started at ``rl.kl.coef``."""
    return lookup(KL_CONTROLLERS, cfg.controller).from_config(cfg)
