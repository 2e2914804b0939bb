"""Open Bandit Pipeline's synthetic slate bandit as the ``obp_slate`` environment.

Why a second environment: every figure PageRL reports so far comes from its
own simulator, which the method was developed against. obp's
:class:`~obp.dataset.SyntheticSlateBanditDataset` is a slate model written by
others for off-policy evaluation research, with its own reward structures
(item-interaction effects within the slate) and click models; a policy or
estimator that only works on ``pagesim`` shows it here.

How obp's concepts map onto :class:`~pagerl.envs.base.PageEnv`:

- obp's ``n_unique_action`` actions are the items, and every request offers
  all of them as its candidates, in a fixed order (candidate j is obp action
  j), as every obp slate may use any action;
- ``len_list`` is the page size K; a page is a slate without repeats
  (obp's non-factorizable setting);
- a request is one obp round: its context vector x ~ N(0, I) (``dim_context``
  values) is drawn from the environment's generator and stored as the
  request's ``user.features``, so a request read back from a file scores the
  same;
- the slot rewards are obp's own:
  :func:`obp.dataset.action_interaction_reward_function` with
  :func:`obp.dataset.logistic_reward_function` as the base reward and the
  dataset's interaction matrix for the chosen ``reward_structure``; obp
  computes them in float16, and this environment uses them as obp returns
  them, for sampling and scoring alike;
- the click model is obp's (``click_model``: None, ``"pbm"`` or
  ``"cascade"``, with ``eta``), re-implemented step by step from
  ``SyntheticSlateBanditDataset.sample_reward_given_expected_reward`` so
  that clicks are drawn from the environment's generator (obp draws from its
  own ``RandomState``, which :class:`PageEnv`'s seeding cannot reach);
- the behavior policy is obp's :func:`obp.dataset.linear_behavior_policy_logit`
  sampled without replacement slot by slot (Plackett-Luce), as obp samples
  logged slates (:meth:`ObpSlateEnv.behavior_page`).

Exact scores: :meth:`ObpSlateEnv.score` is the exact expectation of the
sampled clicks. Under ``"cascade"`` a click at slot k-1 scales every later
slot's click probability by ``(1/k)**eta``, so a slot's expected click depends
on the whole click history above it; the scorer enumerates those histories
(2^(K-1) of them, hence ``len_list <= 12``). obp's own
``calc_ground_truth_policy_value`` multiplies expected rewards instead of
enumerating, which is exact for ``"pbm"`` and None but only an approximation
for ``"cascade"``; this environment does not use it.

obp items carry no text: an item's title is ``"item <j>"``, its category a
fixed label ``"group <j mod categories>"`` that no reward depends on, and
its price 0.0 (obp has none). The language-model prompt therefore shows
nothing about an item but its number; a policy that does well here does so
from the context vector (in the observation) and what it learns per item.

obp is an optional extra (``pip install 'pagerl[obp]'``): this module
imports it only when an environment is built, so ``import pagerl.envs``
works without it and ``make_env("obp_slate")`` says what to install.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from statistics import NormalDist
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from gymnasium import spaces

from pagerl.config.rules import Finding, check_choice, rule
from pagerl.config.schema import RecipeConfig
from pagerl.data.types import Item, Request, User
from pagerl.envs.base import InvalidPageError, Observation, PageEnv
from pagerl.envs.make import register_env

GYM_ID = "pagerl/ObpSlate-v0"
REWARD_STRUCTURES = ("cascade_additive", "cascade_decay", "standard_additive", "standard_decay")
CLICK_MODELS = (None, "pbm", "cascade")
# The cascade scorer enumerates 2^(K-1) click histories.
MAX_CASCADE_PAGE_SIZE = 12
# How many pages best_page() scores exhaustively before it refuses.
MAX_EXHAUSTIVE_PAGES = 200_000
_FLOAT32_MAX = float(np.finfo(np.float32).max)
INSTALL_HINT = "obp is an optional extra of PageRL: pip install 'pagerl[obp]' (or pip install obp==0.4.1)"

FIELDS: Dict[str, str] = {
    "context": "(D,) obp's context vector x of the request (its user.features), drawn from N(0, I)",
    "action_context": "(N, N) obp's action context: the one-hot of each candidate's obp action index "
    "(constant; obp items have no other features)",
}


def _import_obp() -> SimpleNamespace:
    """obp's slate pieces, imported on first use (obp pulls scikit-learn, scipy and seaborn)."""
    try:
        from obp.dataset import (
            SyntheticSlateBanditDataset,
            action_interaction_reward_function,
            linear_behavior_policy_logit,
            logistic_reward_function,
        )
    except ImportError as err:
        raise ImportError(f"the obp_slate environment needs obp ({err}). {INSTALL_HINT}") from err
    return SimpleNamespace(
        SyntheticSlateBanditDataset=SyntheticSlateBanditDataset,
        action_interaction_reward_function=action_interaction_reward_function,
        linear_behavior_policy_logit=linear_behavior_policy_logit,
        logistic_reward_function=logistic_reward_function,
    )


class ObpSlateEnv(PageEnv):
    """obp's synthetic slate bandit behind the page-environment interface (see the module docstring).

    ``seed`` is obp's ``random_state``: it fixes the world (the base reward
    coefficients, the interaction matrix, the behavior policy); requests and
    clicks come from ``reset(seed=...)`` as in every :class:`PageEnv`.
    ``reward_structure="independent"`` is refused: obp 0.4.1's
    ``action_interaction_reward_function`` skips the assignment for it and
    returns 0.5 for every slot of every slate, so no page would matter.
    """

    # The context vector describes the request; the action context has a row per candidate.
    candidate_fields = ("action_context",)

    def __init__(
        self,
        n_items: int = 10,
        page_size: int = 3,
        dim_context: int = 5,
        reward_structure: str = "cascade_additive",
        click_model: Optional[str] = "cascade",
        eta: float = 1.0,
        decay_function: str = "exponential",
        categories: int = 3,
        seed: int = 12345,
        reward: str = "clicks",
        context_levels: int = 0,
    ) -> None:
        if reward_structure == "independent":
            raise ValueError(
                "ObpSlateEnv: reward_structure='independent' is refused: obp 0.4.1 returns 0.5 for every slot "
                f"under it (no page would matter); use one of {list(REWARD_STRUCTURES)}"
            )
        if reward_structure not in REWARD_STRUCTURES:
            raise ValueError(
                f"ObpSlateEnv: reward_structure must be one of {list(REWARD_STRUCTURES)}, got {reward_structure!r}"
            )
        if click_model not in CLICK_MODELS:
            raise ValueError(f"ObpSlateEnv: click_model must be one of {list(CLICK_MODELS)}, got {click_model!r}")
        if click_model == "cascade" and page_size > MAX_CASCADE_PAGE_SIZE:
            raise ValueError(
                f"ObpSlateEnv: page_size {page_size} with click_model='cascade': the exact scorer enumerates "
                f"2^(K-1) click histories and is limited to K <= {MAX_CASCADE_PAGE_SIZE}"
            )
        if not 2 <= int(n_items) <= 127:
            raise ValueError(
                f"ObpSlateEnv: n_items must be in [2, 127] (obp stores slate actions as int8), got {n_items!r}"
            )
        if int(categories) < 1:
            raise ValueError(f"ObpSlateEnv: categories must be >= 1, got {categories!r}")
        if int(context_levels) < 0 or int(context_levels) == 1:
            raise ValueError(f"ObpSlateEnv: context_levels must be 0 (no context in the query) or >= 2, "
                             f"got {context_levels!r}")
        # Level k of a context value: how many of the N(0, 1) quantiles k/L (k = 1..L-1) it reaches.
        self.context_edges = [NormalDist().inv_cdf(k / int(context_levels)) for k in range(1, int(context_levels))]
        self.context_levels = int(context_levels)
        self._obp = _import_obp()
        self.world_seed = int(seed)
        self.reward_structure = reward_structure
        self.dataset = self._obp.SyntheticSlateBanditDataset(
            n_unique_action=int(n_items),
            len_list=int(page_size),
            dim_context=int(dim_context),
            reward_type="binary",
            reward_structure=reward_structure,
            decay_function=decay_function,
            click_model=click_model,
            eta=float(eta),
            base_reward_function=self._obp.logistic_reward_function,
            behavior_policy_function=self._obp.linear_behavior_policy_logit,
            is_factorizable=False,
            random_state=int(seed),
        )
        self.dim_context = int(dim_context)
        self.items: List[Item] = [
            Item(item_id=f"item-{j}", title=f"item {j}", category=f"group {j % int(categories)}", price=0.0,
                 attrs={"obp_action": j})
            for j in range(int(n_items))
        ]
        self._action_index = {item.item_id: j for j, item in enumerate(self.items)}
        observation_space = spaces.Dict(
            {
                # N(0, I) is unbounded: the float32 range, not infinity (which gymnasium's checker warns about)
                "context": spaces.Box(-_FLOAT32_MAX, _FLOAT32_MAX, shape=(self.dim_context,), dtype=np.float32),
                "action_context": spaces.Box(0.0, 1.0, shape=(int(n_items), int(n_items)), dtype=np.float32),
            }
        )
        super().__init__(int(n_items), int(page_size), observation_space, reward)

    # ------------------------------------------------------------------ PageEnv
    def sample_request(self, rng: np.random.Generator, request_id: str = "request") -> Request:
        context = rng.standard_normal(self.dim_context)
        return Request(
            request_id=request_id,
            user=User(user_id=f"context-of-{request_id}", features=[float(v) for v in context]),
            candidates=list(self.items),
            page_size=self.page_size,
            query=self.context_query(context),
        )

    def context_query(self, context: Sequence[float]) -> Optional[str]:
        """The words that show the context vector to a prompt, which shows no user
        features: ``"x<d> q<level>"`` per dimension, the level being the value's
        N(0, 1) quantile bin out of ``context_levels`` (None with 0 levels)."""
        if not self.context_levels:
            return None
        levels = np.searchsorted(np.asarray(self.context_edges), np.asarray(context, dtype=np.float64), side="right")
        return " ".join(f"x{d} q{int(level)}" for d, level in enumerate(levels))

    def observe(self, request: Request) -> Observation:
        one_hot = np.eye(self.num_candidates, dtype=np.float32)
        return {
            "context": self.context_of(request).astype(np.float32),
            "action_context": one_hot[self._actions_of(request, request.candidates)],
        }

    def sample_clicks(self, request: Request, item_ids: Sequence[str], rng: np.random.Generator) -> np.ndarray:
        """Clicks slot by slot as obp's ``sample_reward_given_expected_reward`` draws them."""
        rewards = self.slot_rewards(request, [self._actions_of(request, item_ids)])[0]
        attractiveness = self.dataset.attractiveness
        clicks = np.zeros(self.page_size, dtype=np.int64)
        discount = 1.0
        for k in range(self.page_size):
            if k > 0 and clicks[k - 1]:
                discount *= attractiveness[k]
            clicks[k] = int(rng.random() < discount * rewards[k])
        return clicks

    def score(self, request: Request, item_ids: Sequence[str]) -> Dict[str, Any]:
        """``expected_clicks`` and ``slot_clicks``: the exact expectation of :meth:`sample_clicks`."""
        self.action_of(request, item_ids)  # refuses a page that is not one
        slots = self.cascade_expectation(self.slot_rewards(request, [self._actions_of(request, item_ids)]))[0]
        return {"expected_clicks": float(slots.sum()), "slot_clicks": slots}

    # --------------------------------------------- what the stages call (PageEnv)
    @classmethod
    def from_recipe(cls, recipe: Any, **kwargs: Any) -> "ObpSlateEnv":
        """The environment of a recipe's ``env.obp_slate`` section, its world fixed by ``run.seed``."""
        c = recipe.env.obp_slate
        return cls(
            n_items=int(c.n_items), page_size=int(c.page_size), dim_context=int(c.dim_context),
            reward_structure=str(c.reward_structure), click_model=None if c.click_model == "none" else str(c.click_model),
            eta=float(c.eta), decay_function=str(c.decay_function), categories=int(c.categories),
            context_levels=int(c.context_levels), seed=int(recipe.run.seed), **kwargs,
        )

    def check_request(self, request: Request) -> None:
        super().check_request(request)
        self.context_of(request)
        self._actions_of(request, request.candidates)
        if request.query != self.context_query(self.context_of(request)):
            raise ValueError(f"request {request.request_id!r}: its query {request.query!r} is not the context words "
                             f"this obp_slate environment shows (env.obp_slate.context_levels={self.context_levels})")

    def logging_page(self, request: Request, rng: np.random.Generator) -> Tuple[List[str], float]:
        return self.behavior_page(request, rng)

    def oracle_page(self, request: Request) -> List[str]:
        return self.best_page(request)[0]

    def true_relevance(self, request: Request) -> Dict[str, float]:
        """obp's base reward of each item for the request's context: its click probability
        at the first slot with no other item on the page (no interaction effects)."""
        base = self.dataset.base_reward_function(
            context=self.context_of(request)[None, :], action_context=self.dataset.action_context,
            random_state=self.dataset.random_state,
        )[0]
        return {c.item_id: float(base[j]) for c, j in zip(request.candidates, self._actions_of(request, request.candidates))}

    # ------------------------------------------------------------- obp's model
    def context_of(self, request: Request) -> np.ndarray:
        """The request's obp context vector (its ``user.features``), checked."""
        context = np.asarray(request.user.features, dtype=np.float64)
        if context.shape != (self.dim_context,) or not np.all(np.isfinite(context)):
            raise ValueError(
                f"request {request.request_id!r}: user.features must be the {self.dim_context} finite numbers of "
                f"an obp context vector, got {len(request.user.features)} values"
            )
        return context

    def slot_rewards(self, request: Request, pages: Sequence[Sequence[int]]) -> np.ndarray:
        """``[M, K]`` obp's expected slot rewards of M pages (obp action indices), times the
        click model's examination weight: a slot's click probability before the cascade discount."""
        slates = np.asarray(pages, dtype=np.int64).reshape(-1, self.page_size)
        with np.errstate(over="ignore"):  # obp's float16 sigmoid overflows to the right limit, 0 or 1
            rewards = self._obp.action_interaction_reward_function(
                context=self.context_of(request)[None, :],
                action_context=self.dataset.action_context,
                action=slates.ravel(),
                base_reward_function=self.dataset.base_reward_function,
                reward_type="binary",
                reward_structure=self.reward_structure,
                action_interaction_weight_matrix=self.dataset.action_interaction_weight_matrix,
                len_list=self.page_size,
                is_enumerated=True,
                random_state=self.dataset.random_state,
            )
        return np.asarray(rewards, dtype=np.float64) * self.dataset.exam_weight

    def cascade_expectation(self, rewards: np.ndarray) -> np.ndarray:
        """``[M, K]`` exact expected clicks per slot from :meth:`slot_rewards`, summing over the
        click histories above each slot (one history when the click model has no cascade discount)."""
        attractiveness = np.asarray(self.dataset.attractiveness, dtype=np.float64)
        if np.all(attractiveness == 1.0):
            return rewards.copy()
        expected = np.zeros_like(rewards)
        # Each history: its probability and the discount it leaves for the next slot, per page.
        histories: List[Tuple[np.ndarray, np.ndarray]] = [(np.ones(len(rewards)), np.ones(len(rewards)))]
        for k in range(self.page_size):
            grown = []
            for probability, discount in histories:
                click = discount * rewards[:, k]
                expected[:, k] += probability * click
                if k + 1 < self.page_size:
                    grown.append((probability * click, discount * attractiveness[k + 1]))
                    grown.append((probability * (1.0 - click), discount))
            histories = grown
        return expected

    def best_page(self, request: Request) -> Tuple[List[str], float]:
        """The page with the most expected clicks, by scoring every page, and its expected clicks."""
        count = math.perm(self.num_candidates, self.page_size)
        if count > MAX_EXHAUSTIVE_PAGES:
            raise ValueError(
                f"best_page: {count} pages of {self.page_size} out of {self.num_candidates} items is more than "
                f"the {MAX_EXHAUSTIVE_PAGES} it scores exhaustively"
            )
        pages = np.array(list(itertools.permutations(range(self.num_candidates), self.page_size)), dtype=np.int64)
        totals = self.cascade_expectation(self.slot_rewards(request, pages)).sum(axis=1)
        best = int(np.argmax(totals))
        return [self.items[j].item_id for j in pages[best]], float(totals[best])

    def behavior_page(self, request: Request, rng: np.random.Generator) -> Tuple[List[str], float]:
        """A page of obp's behavior policy (softmax of its logits, drawn slot by slot without
        replacement) and its probability under that policy."""
        logits = self._obp.linear_behavior_policy_logit(
            context=self.context_of(request)[None, :],
            action_context=self.dataset.action_context,
            random_state=self.dataset.random_state,
        )[0]
        remaining, page, propensity = list(range(self.num_candidates)), [], 1.0
        for _ in range(self.page_size):
            weights = np.exp(logits[remaining] - logits[remaining].max())
            weights /= weights.sum()
            pick = int(rng.choice(len(remaining), p=weights))
            propensity *= float(weights[pick])
            page.append(remaining.pop(pick))
        return [self.items[j].item_id for j in page], propensity

    def _actions_of(self, request: Request, items: Sequence[Any]) -> np.ndarray:
        """obp action indices of item ids (or Items), naming any that is not one of this environment's."""
        ids = [getattr(item, "item_id", item) for item in items]
        unknown = [iid for iid in ids if iid not in self._action_index]
        if unknown:
            raise InvalidPageError(
                f"request {request.request_id!r}: not items of this obp_slate environment: {unknown}"
            )
        return np.array([self._action_index[iid] for iid in ids], dtype=np.int64)


register_env("obp_slate", ObpSlateEnv, gym_id=GYM_ID)


@rule
def _obp_slate(r: RecipeConfig) -> Finding:
    """obp_slate's settings are ones obp and its exact scorer take."""
    if r.env.name != "obp_slate":
        return None
    c = r.env.obp_slate
    if importlib.util.find_spec("obp") is None:
        return "env.name", f"'obp_slate' needs the obp package, which is not installed: {INSTALL_HINT}"
    models = tuple("none" if m is None else m for m in CLICK_MODELS)
    checks = (
        check_choice("env.obp_slate.reward_structure", c.reward_structure, REWARD_STRUCTURES),
        check_choice("env.obp_slate.click_model", c.click_model, models),
    )
    for found in checks:
        if found:
            return found
    if not 2 <= c.n_items <= min(127, r.model.max_candidates):
        return "env.obp_slate.n_items", (
            f"expected 2..{min(127, r.model.max_candidates)} (obp stores items as int8, and every item is a "
            f"candidate, which needs an index token: model.max_candidates={r.model.max_candidates}), got {c.n_items}"
        )
    if not 1 <= c.page_size <= c.n_items:
        return "env.obp_slate.page_size", f"must be between 1 and env.obp_slate.n_items ({c.n_items}), got {c.page_size}"
    if c.click_model == "cascade" and c.page_size > MAX_CASCADE_PAGE_SIZE:
        return "env.obp_slate.page_size", (
            f"at most {MAX_CASCADE_PAGE_SIZE} with click_model 'cascade' (the exact scorer enumerates "
            f"2^(K-1) click histories), got {c.page_size}")
    if c.dim_context < 1 or c.categories < 1:
        key = "dim_context" if c.dim_context < 1 else "categories"
        return f"env.obp_slate.{key}", f"must be >= 1, got {getattr(c, key)}"
    if c.context_levels < 0 or c.context_levels == 1:
        return "env.obp_slate.context_levels", f"expected 0 (no context in the prompt) or >= 2, got {c.context_levels}"
    return None
