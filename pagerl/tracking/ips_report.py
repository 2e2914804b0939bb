"""The report's off-policy sanity checks, from ``eval/results.json`` (:mod:`pagerl.tracking.report`):

    results["obd_check"]  (eval.obd_check)  -> "Real logged clicks (Open Bandit Dataset)"
    results["ips_check"]  (eval.ips_check)  -> "IPS on the run's own logs"

A run without them has neither section (not a "skipped" note: they are opt-in).
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

from pagerl.tracking.report import _fmt, _number, _skipped, markdown_table

IPS_COLUMNS = ("estimate ± SE", "interval", "n", "effective n", "max weight")


def _ips_cells(estimate: Any, digits: int) -> List[str]:
    """The cells of :data:`IPS_COLUMNS` for one estimate of ``results.json`` (pagerl.eval.logs_ips.estimate_dict)."""
    if not isinstance(estimate, Mapping):
        return [""] * len(IPS_COLUMNS)
    value, se, ci = _number(estimate.get("value")), _number(estimate.get("se")), estimate.get("ci")
    text = "" if value is None else f"{value:.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")
    interval = (f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
                if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_number(c) is not None for c in ci) else "")
    ess = _number(estimate.get("effective_sample_size"))
    return [text, interval, _fmt(estimate.get("n")), "" if ess is None else f"{ess:.0f}",
            _fmt(estimate.get("max_weight"))]


def obd_section(results: Optional[Any]) -> str:
    """``results["obd_check"]`` (``eval.obd_check``): IPS of BTS on the OBD random log vs BTS's own clicks."""
    check = results.get("obd_check") if isinstance(results, dict) else None
    if not isinstance(check, dict):
        return ""
    level = _number((check.get("bts_ips_on_random_log") or {}).get("level")) or 0.95
    lines = ["## Real logged clicks (Open Bandit Dataset)", "",
             f"The Open Bandit Dataset sample that obp ships (campaign `{check.get('campaign')}`, "
             "`pagerl.data.obd.load_obd`): ZOZOTOWN's real clicks under two logging policies run side by side, "
             "uniform random and Bernoulli Thompson sampling (BTS). BTS's click rate is estimated by "
             "inverse-propensity scoring on the random policy's log (`pagerl.eval.obd_bts.bts_check`: "
             f"obp's BTS with the production prior, {_fmt(check.get('n_sim'))} Thompson draws, seed "
             f"{_fmt(check.get('seed'))}) and set beside the rate BTS logged itself: a sanity check of the "
             f"estimator on real logs. Click rate per shown item, ± standard error, {100 * level:.0f}% normal "
             "interval (`pagerl.eval.ips.ips_estimate`).", ""]
    rows = [["random, on-policy (logged clicks)", *_ips_cells(check.get("random_on_policy"), 5)],
            ["BTS by IPS on the random log", *_ips_cells(check.get("bts_ips_on_random_log"), 5)],
            ["BTS, on-policy (logged clicks)", *_ips_cells(check.get("bts_on_policy"), 5)]]
    lines += markdown_table(["click rate", *IPS_COLUMNS], rows)
    diff, se = _number(check.get("difference")), _number(check.get("difference_se"))
    ratio = _number(check.get("bts_ips_relative_to_random"))
    lines += [""]
    if ratio is not None:
        lines.append(f"- BTS by IPS is {ratio:.4f} times the random policy's click rate (obp's README: 1.198 on "
                     "the `all` sample).")
    if diff is not None:
        inside = "inside" if check.get("on_policy_inside_ci") else "**outside**"
        lines.append(f"- IPS minus BTS's on-policy rate: {diff:+.5f}" + ("" if se is None else f" ± {se:.5f}")
                     + f"; the on-policy rate is {inside} the IPS interval. The BTS that logged was updated "
                     "during the week, the one estimated keeps its prior, so the two are close, not equal.")
    return "\n".join(lines)


def logs_ips_section(results: Optional[Any]) -> str:
    """``results["ips_check"]`` (``eval.ips_check``): IPS on the run's logs of a related policy vs its exact value."""
    check = results.get("ips_check") if isinstance(results, dict) else None
    if not isinstance(check, dict):
        return ""
    title = "IPS on the run's own logs"
    if "skipped" in check:
        return _skipped(title, str(check["skipped"]))
    level = _number((check.get("target_ips") or {}).get("level")) or 0.95
    lines = [f"## {title}", "",
             f"A check of the logged propensities (`pagerl.eval.logs_ips.tempered_logging_check`): the "
             f"{check.get('impressions')} held-out logged impressions "
             f"({', '.join(f'`{f}`' for f in check.get('files') or [])}), re-weighted by target / logged page "
             f"probability, estimate the expected clicks per page of {check.get('target')} (page-level IPS), "
             "and the mean weight should be 1. The simulator's exact value on the same requests is the mean "
             f"exact expected clicks of {_fmt(check.get('pages_per_request'))} target pages per request (Monte "
             "Carlo SE beside it). (Not the uniform policy: against a softmax logger its page weights are "
             f"too uneven for any log of this size; see the module.) ± standard error, {100 * level:.0f}% "
             "normal interval.", ""]
    exact, mc = _number(check.get("target_exact")), _number(check.get("target_exact_mc_se"))
    logging_exact = _number(check.get("logging_exact"))
    rows = [["target policy by IPS on the logs", *_ips_cells(check.get("target_ips"), 4)],
            ["target policy, exact (simulator)",
             "" if exact is None else f"{exact:.4f}" + ("" if mc is None else f" ± {mc:.4f}"), "", "", "", ""],
            ["mean importance weight (1 if the propensities are right)", *_ips_cells(check.get("mean_weight"), 4)],
            ["logging policy, on-policy (logged clicks)", *_ips_cells(check.get("logging_on_policy"), 4)],
            ["logging policy, exact (simulator, logged pages)",
             "" if logging_exact is None else f"{logging_exact:.4f}", "", "", "", ""]]
    lines += markdown_table(["expected clicks per page", *IPS_COLUMNS], rows)
    diff, z = _number(check.get("difference")), _number(check.get("z"))
    if diff is not None:
        inside = "inside" if check.get("exact_inside_ci") else "**outside**"
        lines += ["", f"- IPS minus exact: {diff:+.4f}" + ("" if z is None else f" ({z:+.2f} standard errors)")
                  + f"; the exact value is {inside} the IPS interval. The weights are skewed (rare large "
                  "ones), so their sample mean more often falls short of 1 than above it, and a normal interval "
                  "of it is rough; wrong propensities move it by a factor."]
    return "\n".join(lines)
