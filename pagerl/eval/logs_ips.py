"""A sanity check of the run's own logged propensities: IPS of a related policy against its exact value.

Why: every logged impression of the synth stage carries the logging policy's
exact probability of its whole ordered page (:mod:`pagerl.sim.logging_policies`:
a Plackett-Luce policy). If those propensities are right, re-weighting the
logged clicks by ``target probability / logged probability`` estimates without
bias the expected clicks per page the target policy would get on the same
requests (:func:`pagerl.eval.ips.ips_estimate`), and the mean weight is 1;
the simulator knows the target's exact value. A propensity that is off (of
another page, of the unordered set, of another temperature) moves both.

Which target: the logging policy at ``TEMPERATURE_FACTOR`` times its
temperature (its Plackett-Luce logits divided by it), a policy that spreads
its pages much wider than the logger. Not the uniform-random policy: at page
level its weights ``(N-K)!/N! / p`` are hopeless against a softmax logger --
measured on the quickstart's world (12 candidates, pages of 5) the second
moment of the weights is about 2.7e5, so 200 logged impressions are worth
under one (and the normal interval of the few seen is wildly too narrow); at
twice the temperature it is about 8 (an eighth of the impressions), at the
logger's own 1 (every weight 1: no check at all).

The exact value is the mean over requests of the exact expected clicks
(:meth:`~pagerl.sim.simulator.Simulator.score_page`) of ``pages_per_request``
pages drawn from the target per request (enumerating the N!/(N-K)! pages is
out of reach); its Monte Carlo standard error is reported beside it.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

import numpy as np

from pagerl.data.types import Impression
from pagerl.eval.ips import IpsEstimate, ips_estimate
from pagerl.sim.logging_policies import plackett_luce_log_prob, plackett_luce_sample

# The target: the logging policy with its temperature multiplied by this.
TEMPERATURE_FACTOR = 2.0
# Target pages scored per request for the exact value.
PAGES_PER_REQUEST = 64


def logged_clicks(impression: Impression) -> float:
    """The logged page's clicks: ``page_outcome["clicks"]``, else the count of clicked slots."""
    if "clicks" in impression.page_outcome:
        return float(impression.page_outcome["clicks"])
    return float(sum(f.click for f in impression.feedback))


def tempered_logging_check(impressions: Sequence[Impression], env: Any, seed: int, level: float = 0.95,
                           factor: float = TEMPERATURE_FACTOR,
                           pages_per_request: int = PAGES_PER_REQUEST) -> Dict[str, Any]:
    """The IPS estimate, from ``impressions``, of the expected clicks per page of the logging policy
    at ``factor`` times its temperature, next to its exact value on the same requests; the mean
    importance weight (1 when the propensities are right); and the logging policy's own click rate.

    ``env`` is the run's environment (a :class:`~pagerl.sim.simulator.Simulator`, or an environment
    holding one as ``.simulator``). ``{"skipped": reason}`` when an impression has no logged
    propensity or the environment has no Plackett-Luce logging logits.
    """
    sim = getattr(env, "simulator", env)
    if not hasattr(sim, "logging_logits"):
        return {"skipped": f"the environment ({type(env).__name__}) exposes no logging-policy logits"}
    missing = sum(imp.propensity is None for imp in impressions)
    if not impressions or missing:
        return {"skipped": f"{missing} of {len(impressions)} logged impressions carry no propensity"}
    rng = np.random.default_rng([int(seed), 4242])
    target: List[float] = []
    means: List[float] = []
    variances: List[float] = []
    for imp in impressions:
        logits = sim.logging_logits(imp.request) / float(factor)
        ids = list(sim.resolve(imp.request).item_ids)
        target.append(math.exp(plackett_luce_log_prob(logits, [ids.index(i) for i in imp.page])))
        values = []
        for _ in range(int(pages_per_request)):
            page = [ids[j] for j in plackett_luce_sample(logits, imp.request.page_size, rng)]
            values.append(sim.score_page(imp.request, page).expected_clicks)
        means.append(float(np.mean(values)))
        variances.append(float(np.var(values, ddof=1)) if len(values) > 1 else 0.0)
    clicks = [logged_clicks(imp) for imp in impressions]
    logging = [float(imp.propensity) for imp in impressions]
    estimate = ips_estimate(clicks, target, logging, level)
    weights = ips_estimate(np.ones(len(clicks)), target, logging, level)  # the mean weight
    on_policy = ips_estimate(clicks, np.ones(len(clicks)), np.ones(len(clicks)), level)
    exact = float(np.mean(means))
    difference = estimate.value - exact
    return {
        "target": f"the logging policy at {factor:g}x its temperature",
        "temperature_factor": float(factor),
        "impressions": len(impressions),
        "target_ips": estimate_dict(estimate),
        "target_exact": exact,
        "target_exact_mc_se": math.sqrt(sum(variances) / int(pages_per_request)) / len(means),
        "pages_per_request": int(pages_per_request),
        "difference": difference,
        "z": difference / estimate.se if estimate.se else None,
        "exact_inside_ci": bool(estimate.ci is not None and estimate.ci[0] <= exact <= estimate.ci[1]),
        "mean_weight": estimate_dict(weights),
        "logging_on_policy": estimate_dict(on_policy),
        "logging_exact": float(np.mean([sim.score_page(imp.request, imp.page).expected_clicks
                                        for imp in impressions])),
    }


def estimate_dict(estimate: IpsEstimate) -> Dict[str, Any]:
    """An :class:`~pagerl.eval.ips.IpsEstimate` as JSON: value, se, ci, level, n, max_weight,
    effective_sample_size."""
    return {"value": estimate.value, "se": estimate.se, "ci": list(estimate.ci) if estimate.ci else None,
            "level": estimate.level, "n": estimate.n, "max_weight": estimate.max_weight,
            "effective_sample_size": estimate.effective_sample_size}
