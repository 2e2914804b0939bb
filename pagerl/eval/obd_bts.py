"""A sanity check of IPS on real logs: the BTS policy's click rate estimated from the random
campaign's log, against the BTS campaign's own (on-policy) click rate.

Why this check: the Open Bandit Dataset ran two logging policies side by
side on the same platform and days, so one policy's click rate can be
estimated off-policy from the other's log and compared with what it really
got. It is the check obp's README runs (its IPS estimate of BTS on the
``random``/``all`` sample is 1.198 times the random policy's click rate).

The target policy is obp's reproduction of the production Bernoulli Thompson
sampling: ``BernoulliTS(is_zozotown_prior=True, campaign=...)``, which draws
one Beta sample per item from the prior in obp's ``prior_bts.yaml`` and shows
the three highest; its probability of item j at position p is estimated by
Monte Carlo (``compute_batch_action_dist``). :func:`bts_action_dist` does the
same draws vectorised -- the same ``RandomState`` stream, in the same order,
so the same counts as obp's loop -- and reads the prior from the file
without importing obp. The BTS policy that logged the ``bts`` campaign was
updated during the week, so its on-policy click rate and this fixed-prior
policy's are close, not equal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import yaml

from pagerl.data.errors import DataError
from pagerl.data.io import PathLike
from pagerl.data.obd import CAMPAIGNS, POSITIONS, load_obd, obp_package_dir
from pagerl.eval.ips import ips_estimate
from pagerl.eval.logs_ips import estimate_dict

# obp's defaults for this check (its README and BernoulliTS.compute_batch_action_dist).
DEFAULT_SIMULATIONS = 100_000
DEFAULT_SEED = 12345
_CHUNK = 10_000


def bts_prior(campaign: str, prior_path: Optional[PathLike] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The production BTS prior ``(alpha, beta)`` of a campaign from obp's ``prior_bts.yaml``."""
    if campaign not in CAMPAIGNS:
        raise ValueError(f"campaign: expected one of {CAMPAIGNS}, got {campaign!r}")
    path = Path(prior_path) if prior_path is not None else obp_package_dir() / "policy" / "conf" / "prior_bts.yaml"
    with open(path, "rb") as handle:
        prior = yaml.safe_load(handle)
    try:
        alpha, beta = (np.asarray(prior[campaign][key], dtype=np.float64) for key in ("alpha", "beta"))
    except (KeyError, TypeError) as err:
        raise DataError(f"{path}: no {campaign}.alpha / {campaign}.beta lists ({err})") from None
    if alpha.shape != beta.shape or alpha.ndim != 1:
        raise DataError(f"{path}: {campaign}.alpha and .beta must be lists of the same length")
    return alpha, beta


def bts_action_dist(
    campaign: str,
    n_sim: int = DEFAULT_SIMULATIONS,
    seed: int = DEFAULT_SEED,
    prior_path: Optional[PathLike] = None,
) -> np.ndarray:
    """``[items, 3]``: the share of ``n_sim`` Thompson draws that put item j at position p,
    exactly as ``obp.policy.BernoulliTS(is_zozotown_prior=True, random_state=seed)
    .compute_batch_action_dist(n_sim=n_sim)[0]`` counts them."""
    if n_sim < 1:
        raise ValueError(f"n_sim must be >= 1, got {n_sim}")
    alpha, beta = bts_prior(campaign, prior_path)
    rng = np.random.RandomState(int(seed))
    counts = np.zeros((len(alpha), len(POSITIONS)))
    for start in range(0, int(n_sim), _CHUNK):
        size = min(_CHUNK, int(n_sim) - start)
        draws = rng.beta(a=alpha, b=beta, size=(size, len(alpha)))
        top = np.argsort(draws, axis=1)[:, ::-1][:, : len(POSITIONS)]
        for slot in range(len(POSITIONS)):
            counts[:, slot] += np.bincount(top[:, slot], minlength=len(alpha))
    return counts / int(n_sim)


def bts_check(
    campaign: str = "all",
    data_dir: Optional[PathLike] = None,
    n_sim: int = DEFAULT_SIMULATIONS,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> Dict[str, Any]:
    """The IPS estimate of BTS's click rate on the ``random`` log next to the click rates
    both campaigns logged (each an :class:`~pagerl.eval.ips.IpsEstimate`; the on-policy ones
    have every weight 1), and the BTS estimate relative to the random policy's rate."""
    random_log = load_obd("random", campaign, data_dir, candidates="shown")
    bts_log = load_obd("bts", campaign, data_dir, candidates="shown")
    dist = bts_action_dist(campaign, n_sim=n_sim, seed=seed)
    if dist.shape[0] != len(random_log.items):
        raise DataError(
            f"the BTS prior of campaign {campaign!r} has {dist.shape[0]} items, its item_context.csv "
            f"{len(random_log.items)}"
        )
    target = dist[random_log.item_indices, random_log.slots]
    on_policy = {
        name: ips_estimate(log.clicks, np.ones(len(log.rows)), np.ones(len(log.rows)), level)
        for name, log in (("random", random_log), ("bts", bts_log))
    }
    estimate = ips_estimate(random_log.clicks, target, random_log.propensities, level)
    return {
        "campaign": campaign,
        "random_on_policy": on_policy["random"],
        "bts_ips_on_random_log": estimate,
        "bts_on_policy": on_policy["bts"],
        "bts_ips_relative_to_random": (
            estimate.value / on_policy["random"].value if on_policy["random"].value > 0 else None
        ),
        "n_sim": int(n_sim),
        "seed": int(seed),
    }


def bts_check_figures(check: Dict[str, Any]) -> Dict[str, Any]:
    """:func:`bts_check`'s result as JSON for ``eval/results.json`` (``results["obd_check"]``), with
    the comparison the check is for: the IPS estimate minus the BTS campaign's on-policy click
    rate, the standard error of that difference (the two samples are independent) and whether
    the on-policy rate lies inside the estimate's interval."""

    estimate, on_policy = check["bts_ips_on_random_log"], check["bts_on_policy"]
    difference = estimate.value - on_policy.value
    se = (estimate.se ** 2 + on_policy.se ** 2) ** 0.5 if estimate.se is not None and on_policy.se is not None else None
    return {
        "campaign": check["campaign"],
        "random_on_policy": estimate_dict(check["random_on_policy"]),
        "bts_ips_on_random_log": estimate_dict(estimate),
        "bts_on_policy": estimate_dict(on_policy),
        "bts_ips_relative_to_random": check["bts_ips_relative_to_random"],
        "difference": difference,
        "difference_se": se,
        "on_policy_inside_ci": bool(estimate.ci is not None and estimate.ci[0] <= on_policy.value <= estimate.ci[1]),
        "n_sim": check["n_sim"],
        "seed": check["seed"],
    }
