"""Synthesize logged impressions from the simulator: the synth stage.

``train`` and ``eval`` files hold pages drawn from the logging policy with
sampled feedback, exactly as production logs would, plus the exact logging
propensity of each page. The two splits use separate random streams under
the run seed (and the world its own), so the held-out requests are not a
replay of training ones, and adding training requests leaves the eval split
unchanged.

Next to the data a ``synth.json`` records the sim config, the seed and the
stats, so a later stage can rebuild the same world (``World.from_config``)
and check it scores the file it reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable, Dict, Iterator, Optional, Union

import numpy as np

from pagerl.data.io import write_impressions
from pagerl.data.types import Impression
from pagerl.envs import env_from_recipe
from pagerl.sim.simulator import Simulator
from pagerl.sim.world import World, stream

# Stream keys of the splits under the run seed (the world uses 0-3).
SPLIT_STREAMS = {"train": 10, "eval": 11}
FORMAT_EXTENSIONS = {"jsonl": ".jsonl", "parquet": ".parquet"}

Progress = Callable[[str, int, int], None]


def config_to_dict(cfg: Any) -> Dict[str, Any]:
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(vars(cfg))


class _SplitStats:
    """Running means of what a split's pages did and were worth."""

    def __init__(self) -> None:
        self.n = 0
        self.sums: Dict[str, float] = {}

    def add(self, **values: float) -> None:
        self.n += 1
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)

    def means(self) -> Dict[str, float]:
        out = {"num_requests": self.n}
        out.update({f"mean_{k}": (v / self.n if self.n else 0.0) for k, v in self.sums.items()})
        return out


def _tqdm_progress(name: str, total: int) -> Callable[[int], None]:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return lambda done: None
    bar = tqdm(total=total, desc=f"synth {name}", file=sys.stderr, mininterval=1.0, leave=False)

    def update(done: int) -> None:
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def _impressions(
    sim: Any, name: str, count: int, rng: np.random.Generator, stats: _SplitStats, tick: Callable[[int], None]
) -> Iterator[Impression]:
    """``count`` logged impressions of ``sim``: a :class:`~pagerl.envs.PageEnv` or a
    :class:`Simulator` (the same methods)."""
    width = max(6, len(str(max(count - 1, 0))))
    for i in range(count):
        request = sim.sample_request(rng, f"{name}-{i:0{width}d}")
        page, propensity = sim.logging_page(request, rng)
        feedback, outcome = sim.sample_feedback(request, page, rng)
        score = sim.score_page(request, page)
        stats.add(
            clicks=outcome["clicks"],
            gmv=outcome["gmv"],
            purchases=outcome["purchases"],
            logging_expected_clicks=score.expected_clicks,
            **{f"logging_{key}": value for key, value in (("expected_gmv", score.expected_gmv),
                                                          ("ndcg", score.ndcg)) if value is not None},
            with_query=request.query is not None,
        )
        yield Impression(request=request, page=page, feedback=feedback, page_outcome=outcome, propensity=propensity)
        tick(i + 1)


def synthesize(
    sim_cfg: Any,
    seed: int,
    out_dir: Union[str, os.PathLike],
    fmt: str = "jsonl",
    progress: Union[bool, Progress] = True,
) -> Dict[str, Any]:
    """Write ``train`` and ``eval`` logged impressions of the simulator's world
    ``(sim_cfg, seed)`` under ``out_dir``: :func:`synthesize_env` for ``pagesim``."""
    sim = Simulator(World.from_config(sim_cfg, seed))
    return synthesize_env(sim, {"name": "pagesim", "sim": config_to_dict(sim_cfg)}, seed, out_dir,
                          {"train": sim_cfg.num_train_requests, "eval": sim_cfg.num_eval_requests}, fmt, progress)


def synthesize_recipe(
    recipe: Any, out_dir: Union[str, os.PathLike], fmt: str = "jsonl", progress: Union[bool, Progress] = True
) -> Dict[str, Any]:
    """The synth stage of a recipe: logs of its environment ``env.name`` (``pagesim``:
    the world of ``sim.*``; another: its ``env.<name>`` section), ``sim.num_train_requests``
    and ``sim.num_eval_requests`` of them, under ``run.seed``."""

    name = str(recipe.env.name)
    if name == "pagesim":
        return synthesize(recipe.sim, recipe.run.seed, out_dir, fmt, progress)
    meta = {"name": name, name: config_to_dict(getattr(recipe.env, name))}
    counts = {"train": int(recipe.sim.num_train_requests), "eval": int(recipe.sim.num_eval_requests)}
    return synthesize_env(env_from_recipe(recipe), meta, recipe.run.seed, out_dir, counts, fmt, progress)


def synthesize_env(
    env: Any,
    env_meta: Dict[str, Any],
    seed: int,
    out_dir: Union[str, os.PathLike],
    counts: Dict[str, int],
    fmt: str = "jsonl",
    progress: Union[bool, Progress] = True,
) -> Dict[str, Any]:
    """Write ``train`` and ``eval`` logged impressions of an environment under ``out_dir``.

    ``env`` is a :class:`~pagerl.envs.PageEnv` (or a :class:`Simulator`: the same
    methods) whose logging policy lays out the pages; ``env_meta`` (its name and
    configuration) goes into ``synth.json``; ``counts`` gives each split's size.
    ``progress``: True shows a tqdm bar on stderr, False nothing, or a
    callable ``(split, done, total)``. Returns ``{"train_path", "eval_path",
    "meta_path", "stats": {"train": {...}, "eval": {...}}, "seconds"}``; the
    stats are means per request of sampled clicks / GMV / purchases and of
    the logging pages' exact expected clicks, GMV and NDCG (where the
    environment has them).
    """
    if fmt not in FORMAT_EXTENSIONS:
        raise ValueError(f"synthesize: fmt must be one of {sorted(FORMAT_EXTENSIONS)}, got {fmt!r}")
    start = time.perf_counter()
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    result: Dict[str, Any] = {"stats": {}}
    for name, count in counts.items():
        if progress is True:
            tick = _tqdm_progress(name, count)
        elif callable(progress):
            tick = (lambda split, total: (lambda done: progress(split, done, total)))(name, count)
        else:
            tick = lambda done: None  # noqa: E731
        path = os.path.join(out_dir, f"{name}{FORMAT_EXTENSIONS[fmt]}")
        stats = _SplitStats()
        rng = stream(seed, SPLIT_STREAMS[name])
        write_impressions(path, _impressions(env, name, count, rng, stats, tick))
        result[f"{name}_path"] = path
        result["stats"][name] = stats.means()
    result["seconds"] = time.perf_counter() - start
    meta_path = os.path.join(out_dir, "synth.json")
    meta = {"seed": int(seed), "format": fmt, "env": env_meta["name"],
            **{k: v for k, v in env_meta.items() if k != "name"}, **result}
    with open(meta_path, "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=2)
    result["meta_path"] = meta_path
    return result


def load_synth_meta(out_dir: Union[str, os.PathLike]) -> Optional[Dict[str, Any]]:
    """The ``synth.json`` written next to synthesized data, or None."""
    path = os.path.join(os.fspath(out_dir), "synth.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
