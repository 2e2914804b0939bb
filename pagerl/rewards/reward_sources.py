"""Reward sources: who says what a generated page is worth (docs/method.md, "Reward sources").

A source turns pages into a **page reward** (one number per page) and **item
rewards** (one number per slot). Sources sit in a registry, picked by
``rewards.source``:

- ``learned``: the page and item reward models trained by the ``rm`` stage
  (:func:`pagerl.rewards.models.load_reward_models`), read from
  ``rewards.model_dir`` (default ``<run_dir>/rm/final``);
- ``simulator``: the simulator's exact ground truth, for upper-bound
  experiments on simulated data. With ``rewards.sim_objective=clicks`` the
  page reward is the page's expected clicks and item ``k``'s reward the
  expected clicks of slot ``k`` (they sum to the page reward); with ``gmv``
  the same for expected GMV (slot ``k`` contributes its expected clicks times
  P(purchase | click) times price);
- ``python``: a team's own function named by ``rewards.function``, called as
  ``function(request, page_item_ids) -> (page_reward, item_rewards)`` once per
  valid page, so business rules plug in without touching PageRL.

What every source shares lives here, not in the sources: :func:`score_pages`
decides validity (K distinct candidates of the request, and the parser's own
verdict when one is given), calls the source on the valid pages only, checks
the shapes and that every number is finite, and gives invalid pages
``valid=False`` and zero rewards. A source therefore never sees an invalid page
and cannot hand back a NaN unnoticed.

A new source is a class with ``build`` (and optionally ``check``) registered
with :func:`register_reward_source`.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Type

import numpy as np

from pagerl.config.rules import Finding, rule
from pagerl.config.schema import RecipeConfig
from pagerl.data.types import Request
from pagerl.envs import env_from_recipe
from pagerl.errors import PageRLError, RecipeError
from pagerl.registry import Registry
from pagerl.rewards.models import load_reward_models


class RewardError(PageRLError):
    """A reward that cannot be trained on: a non-finite value, or a source's
    answer of the wrong shape or type."""


# ----------------------------------------------------------------- result


@dataclass
class ScoredPages:
    """Rewards of a batch of B pages of page size K.

    ``page`` (B,) and ``items`` (B, K) are float64 and exactly zero where
    ``valid`` (B,) is False; ``reasons[b]`` says why page b is invalid ("" when
    valid)."""

    page: np.ndarray
    items: np.ndarray
    valid: np.ndarray
    reasons: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.page)

    @property
    def page_size(self) -> int:
        return int(self.items.shape[1])

    def as_tensors(self, dtype: Any = None) -> Tuple[Any, Any, Any]:
        """``(page_rewards[B], item_rewards[B, K], valid[B])`` as torch tensors
        (float32 unless ``dtype`` says otherwise; valid is bool)."""
        import torch

        dtype = dtype or torch.float32
        return (
            torch.as_tensor(self.page, dtype=dtype),
            torch.as_tensor(self.items, dtype=dtype),
            torch.as_tensor(self.valid, dtype=torch.bool),
        )

    @staticmethod
    def concat(parts: Sequence["ScoredPages"]) -> "ScoredPages":
        """Batches in order as one (all of one page size)."""
        if not parts:
            raise ValueError("ScoredPages.concat: nothing to concatenate")
        sizes = {p.page_size for p in parts}
        if len(sizes) != 1:
            raise RewardError(f"cannot join reward batches of different page sizes {sorted(sizes)}")
        return ScoredPages(
            page=np.concatenate([p.page for p in parts]),
            items=np.concatenate([p.items for p in parts]),
            valid=np.concatenate([p.valid for p in parts]),
            reasons=[r for p in parts for r in p.reasons],
        )


# --------------------------------------------------------------- registry


class RewardSource:
    """What a source implements. ``score_valid`` gets valid pages only (K
    distinct candidates of their request, one K for the batch) and returns
    ``(page[M], items[M, K])``; :func:`score_pages` checks the answer."""

    name: ClassVar[str] = ""

    @classmethod
    def check(cls, recipe: RecipeConfig, run_dir: Path) -> None:
        """Fail fast, in the driver, on what the recipe gets wrong (a bad
        path, a missing directory) before any worker starts. Cheap: loads nothing big."""

    @classmethod
    def build(cls, recipe: RecipeConfig, run_dir: Path) -> "RewardSource":
        raise NotImplementedError

    def score_valid(self, requests: Sequence[Request], pages: Sequence[Sequence[str]]) -> Tuple[Any, Any]:
        raise NotImplementedError


# The registry of the recipe key ``rewards.source`` (the recipe loader checks the key against it).
REWARD_SOURCES: Registry = Registry("rewards.source")


def register_reward_source(name: str) -> Callable[[Type[RewardSource]], Type[RewardSource]]:
    """Class decorator: make a source selectable as ``rewards.source: <name>``."""

    def add(cls: Type[RewardSource]) -> Type[RewardSource]:
        if name in REWARD_SOURCES and REWARD_SOURCES[name] is not cls:
            raise ValueError(f"reward source {name!r} is already registered ({REWARD_SOURCES[name].__qualname__})")
        cls.name = name
        REWARD_SOURCES[name] = cls
        return cls

    return add


def source_class(name: str) -> Type[RewardSource]:
    cls = REWARD_SOURCES.get(name)
    if cls is None:
        raise RecipeError(
            f"'rewards.source': unknown reward source {name!r}; registered sources are "
            f"{', '.join(sorted(REWARD_SOURCES))}"
        )
    return cls


def check_reward_source(recipe: RecipeConfig, run_dir: Path) -> None:
    """Everything about ``rewards.*`` that can fail before workers start."""
    source_class(recipe.rewards.source).check(recipe, Path(run_dir))


def build_reward_source(recipe: RecipeConfig, run_dir: Path) -> RewardSource:
    """The source ``rewards.source`` names, ready to score (in this process)."""
    cls = source_class(recipe.rewards.source)
    cls.check(recipe, Path(run_dir))
    return cls.build(recipe, Path(run_dir))


# ---------------------------------------------------------------- scoring


def page_invalid_reason(request: Request, page: Any) -> str:
    """Why ``page`` is not K distinct candidates of ``request`` ("" if it is)."""
    if isinstance(page, (str, bytes)) or not isinstance(page, Sequence):
        return f"expected a list of item ids, got {type(page).__name__}"
    if len(page) != request.page_size:
        return f"has {len(page)} items, expected {request.page_size}"
    ids = {c.item_id for c in request.candidates}
    for slot, item_id in enumerate(page):
        if item_id not in ids:
            return f"slot {slot}: {item_id!r} is not a candidate"
    if len(set(page)) != len(page):
        return "repeats an item"
    return ""


def score_pages(
    source: RewardSource,
    requests: Sequence[Request],
    pages: Sequence[Sequence[str]],
    valid: Optional[Sequence[bool]] = None,
) -> ScoredPages:
    """Rewards of ``pages[b]`` for ``requests[b]``; see the module doc.

    ``valid`` is the page parser's verdict when there is one (a response can
    hold K good items and still be invalid, e.g. with no EOS); such pages are
    invalid whatever their items.
    """
    if len(requests) != len(pages):
        raise ValueError(f"score_pages: {len(requests)} requests but {len(pages)} pages")
    if valid is not None and len(valid) != len(pages):
        raise ValueError(f"score_pages: {len(pages)} pages but {len(valid)} validity flags")
    sizes = sorted({r.page_size for r in requests})
    if len(sizes) > 1:
        raise RewardError(
            f"one reward batch must have one page size, got requests with page sizes {sizes}; "
            "score them in separate batches"
        )
    k = sizes[0] if sizes else 0
    reasons = []
    for b, (request, page) in enumerate(zip(requests, pages)):
        reason = page_invalid_reason(request, page)
        if not reason and valid is not None and not bool(valid[b]):
            reason = "rejected by the page parser"
        reasons.append(reason)
    keep = [b for b, r in enumerate(reasons) if not r]
    out = ScoredPages(
        page=np.zeros(len(pages), dtype=np.float64),
        items=np.zeros((len(pages), k), dtype=np.float64),
        valid=np.array([not r for r in reasons], dtype=bool),
        reasons=reasons,
    )
    if keep:
        kept_requests = [requests[b] for b in keep]
        page_r, item_r = source.score_valid(kept_requests, [list(pages[b]) for b in keep])
        page_r, item_r = _checked(source, kept_requests, page_r, item_r, k)
        out.page[keep] = page_r
        out.items[keep] = item_r
    return out


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def _checked(
    source: RewardSource, requests: Sequence[Request], page_r: Any, item_r: Any, k: int
) -> Tuple[np.ndarray, np.ndarray]:
    where = f"reward source {source.name!r}"
    try:
        page_r, item_r = _to_numpy(page_r), _to_numpy(item_r)
    except (TypeError, ValueError) as exc:
        raise RewardError(f"{where}: rewards are not numbers: {exc}") from None
    m = len(requests)
    if page_r.shape != (m,) or item_r.shape != (m, k):
        raise RewardError(
            f"{where}: returned page rewards of shape {page_r.shape} and item rewards of shape "
            f"{item_r.shape} for {m} pages of {k} items; expected ({m},) and ({m}, {k})"
        )
    for name, values in (("page", page_r), ("item", item_r)):
        bad = ~np.isfinite(values)
        if bad.any():
            b = int(np.argwhere(bad)[0][0])
            raise RewardError(
                f"{where}: non-finite {name} reward for request {requests[b].request_id!r} "
                f"({values[b].tolist()}); a NaN or infinite reward would corrupt training"
            )
    return page_r, item_r


# ---------------------------------------------------------------- sources


@register_reward_source("simulator")
class SimulatorSource(RewardSource):
    """The environment's ground truth (``env.name``: pagerl.envs): exact expected clicks or GMV.

    The environment is rebuilt from the recipe (``env.name``, its section,
    ``run.seed``), as the synth stage built it; requests from any other world
    fail with the environment's own message (unknown user or item, mismatched
    price). GMV needs prices, which only ``pagesim`` has."""

    OBJECTIVES = ("clicks", "gmv")

    def __init__(self, env: Any, objective: str) -> None:
        if objective not in self.OBJECTIVES:
            raise RecipeError(
                f"'rewards.sim_objective': expected one of {', '.join(self.OBJECTIVES)}, got {objective!r}"
            )
        if objective == "gmv" and getattr(env, "simulator", None) is None:
            raise RecipeError(
                f"'rewards.sim_objective': 'gmv' needs item prices, which the environment {type(env).__name__} "
                "does not have; use 'clicks' (or env.name=pagesim)"
            )
        self.env = env
        self.objective = objective

    @classmethod
    def build(cls, recipe: RecipeConfig, run_dir: Path) -> "SimulatorSource":
        return cls(env_from_recipe(recipe), recipe.rewards.sim_objective)

    def score_valid(self, requests: Sequence[Request], pages: Sequence[Sequence[str]]) -> Tuple[Any, Any]:
        m, k = len(pages), requests[0].page_size
        page_r, item_r = np.zeros(m), np.zeros((m, k))
        # Pages of one request are scored in one vectorised call.
        by_request: Dict[int, List[int]] = {}
        for b, request in enumerate(requests):
            by_request.setdefault(id(request), []).append(b)
        try:
            for rows in by_request.values():
                request = requests[rows[0]]
                scores = self.env.score_pages(request, [pages[b] for b in rows])
                for b, score in zip(rows, scores):
                    slots = np.asarray(self.env.expected_slot_clicks(request, pages[b]))
                    if self.objective == "clicks":
                        page_r[b], item_r[b] = score.expected_clicks, slots
                    else:
                        resolved = self.env.simulator.resolve(request)
                        value = resolved.model.value_if_click[[resolved.position[i] for i in pages[b]]]
                        page_r[b], item_r[b] = score.expected_gmv, slots * value
        except ValueError as exc:  # SimulatorError and InvalidPageError are ValueErrors
            raise RewardError(
                "rewards.source=simulator scores only requests of the simulated world of the recipe's "
                f"environment (env.name, its section, run.seed): {exc}"
            ) from None
        return page_r, item_r


def resolve_function(path: str, python_path: Sequence[str] = (), key: str = "rewards.function") -> Callable:
    """The callable named by ``package.module:function`` or ``package.module.function``.

    Errors name the recipe ``key`` and say what was expected; ``python_path``
    directories are put in front of ``sys.path`` first.
    """
    where = f"'{key}' = {path!r}"
    if not isinstance(path, str) or not path.strip():
        raise RecipeError(f"'{key}': is empty; name a function as 'package.module:function'")
    path = path.strip()
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr or ":" in attr:
        raise RecipeError(f"{where}: expected 'package.module:function' or 'package.module.function'")
    for entry in reversed(list(python_path)):
        entry = os.path.abspath(entry)
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise RecipeError(
            f"{where}: cannot import module {module_name!r} ({exc}); is it installed, "
            "or is its directory listed in rewards.python_path?"
        ) from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise RecipeError(f"{where}: {getattr(target, '__name__', module_name)!r} has no attribute {part!r}")
        target = getattr(target, part)
    if not callable(target):
        raise RecipeError(f"{where}: names a {type(target).__name__}, not a function")
    return target


@register_reward_source("python")
class PythonFunctionSource(RewardSource):
    """A user function, one call per valid page (business rules, heuristics).

    Contract: ``function(request: Request, page: list[str]) -> (page_reward,
    item_rewards)`` with a real page reward and K real item rewards, all
    finite. A page is a list of item ids in slot order."""

    def __init__(self, function: Callable, path: str) -> None:
        self.function = function
        self.path = path

    @classmethod
    def check(cls, recipe: RecipeConfig, run_dir: Path) -> None:
        resolve_function(recipe.rewards.function, recipe.rewards.python_path)

    @classmethod
    def build(cls, recipe: RecipeConfig, run_dir: Path) -> "PythonFunctionSource":
        path = recipe.rewards.function
        return cls(resolve_function(path, recipe.rewards.python_path), path)

    def score_valid(self, requests: Sequence[Request], pages: Sequence[Sequence[str]]) -> Tuple[Any, Any]:
        k = requests[0].page_size
        page_r, item_r = np.zeros(len(pages)), np.zeros((len(pages), k))
        for b, (request, page) in enumerate(zip(requests, pages)):
            page_r[b], item_r[b] = self._one(request, list(page), k)
        return page_r, item_r

    def _one(self, request: Request, page: List[str], k: int) -> Tuple[float, np.ndarray]:
        where = f"rewards.function {self.path!r} on request {request.request_id!r}"
        expected = f"expected (page_reward, item_rewards) with a number and {k} numbers"
        answer = self.function(request, page)
        if not isinstance(answer, (tuple, list)) or len(answer) != 2:
            raise RewardError(f"{where}: returned {_show(answer)}; {expected}")
        page_reward, items = answer
        try:
            page_value = np.asarray(page_reward, dtype=np.float64)
            item_values = np.asarray(items, dtype=np.float64)
        except (TypeError, ValueError):
            raise RewardError(f"{where}: returned {_show(answer)}, not numbers; {expected}") from None
        if page_value.shape != () or isinstance(page_reward, (str, bytes)):
            raise RewardError(f"{where}: page reward {_show(page_reward)} is not one number; {expected}")
        if item_values.shape != (k,) or isinstance(items, (str, bytes)):
            raise RewardError(f"{where}: item rewards {_show(items)} are not {k} numbers; {expected}")
        if not math.isfinite(float(page_value)) or not np.isfinite(item_values).all():
            raise RewardError(f"{where}: returned a non-finite reward {_show(answer)}; rewards must be finite")
        return float(page_value), item_values


def _show(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@register_reward_source("learned")
class LearnedSource(RewardSource):
    """The page and item reward models of the ``rm`` stage.

    ``models.score(requests, pages) -> (Tensor[B], Tensor[B, K])`` is one
    batched forward pass of each model; it runs without gradients."""

    def __init__(self, models: Any, model_dir: Path) -> None:
        self.models = models
        self.model_dir = model_dir

    @staticmethod
    def model_dir_of(recipe: RecipeConfig, run_dir: Path) -> Path:
        return Path(recipe.rewards.model_dir) if recipe.rewards.model_dir else Path(run_dir) / "rm" / "final"

    @classmethod
    def check(cls, recipe: RecipeConfig, run_dir: Path) -> None:
        model_dir = cls.model_dir_of(recipe, run_dir)
        if not model_dir.is_dir():
            key = "rewards.model_dir" if recipe.rewards.model_dir else "rewards.model_dir (empty: <run_dir>/rm/final)"
            raise RecipeError(
                f"'{key}': no trained reward models at {model_dir}; run the rm stage first "
                "or point rewards.model_dir at its final directory"
            )

    @classmethod
    def build(cls, recipe: RecipeConfig, run_dir: Path) -> "LearnedSource":
        model_dir = cls.model_dir_of(recipe, run_dir)
        # A worker's chunk (rewards.batch_size pages) is one forward pass.
        return cls(load_reward_models(model_dir, batch_size=recipe.rewards.batch_size), model_dir)

    def score_valid(self, requests: Sequence[Request], pages: Sequence[Sequence[str]]) -> Tuple[Any, Any]:
        import torch

        with torch.no_grad():
            return self.models.score(list(requests), [list(p) for p in pages])


@rule
def _reward_source(r: RecipeConfig) -> Finding:
    """``rewards.source=python`` names its function (the source itself is checked against
    :data:`REWARD_SOURCES` by the recipe loader)."""
    w = r.rewards
    if w.source == "python" and not w.function.strip():
        return "rewards.function", "rewards.source=python needs a function: 'package.module:function'"
    return None
