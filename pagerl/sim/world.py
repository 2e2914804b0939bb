"""The simulated world: a catalogue of items and a population of users, with
the ground truth that connects them.

Everything is drawn from ``(SimConfig, seed)`` and nothing else, each part
from its own random stream (items, users, the logging model's errors), so
the same config and seed give the same world on every machine and in every
Ray worker, and changing the number of users leaves the catalogue alone.

What a model can see and what it cannot (by design, so that learning from
the prompt beats random but cannot reach the oracle):

- an item's **category** is visible, and a user's category affinities show
  through the categories of their **history** (sampled from their true
  preferences);
- an item's **quality** is visible through its **title adjective** (a
  quality quintile: budget < basic < standard < premium < deluxe) and its
  **rating** attribute (noisy);
- the user-item **latent match** is hidden; the title's style word names the
  item's dominant latent direction and the user **features** are a noisy copy
  of the user's latent vector, so it is hinted at, not given;
- **near-duplicates** (groups of 2-3 items) share category, title words and
  nearly the latent vector, and carry the same ``attrs["group"]`` (like a
  parent product id); their titles differ by a suffix (v2, 2-pack, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

import numpy as np

from pagerl.data.types import Item, User
from pagerl.sim.errors import SimulatorError

CATEGORY_NAMES = [
    "books", "electronics", "garden", "toys", "beauty", "sports", "kitchen", "music", "outdoor", "pets",
    "fashion", "grocery", "health", "automotive", "office", "games", "baby", "tools", "crafts", "travel",
]
QUALITY_WORDS = ["budget", "basic", "standard", "premium", "deluxe"]
# One pair of words per latent dimension: (positive direction, negative direction).
STYLE_WORDS = [
    ("classic", "modern"), ("compact", "large"), ("rugged", "elegant"), ("eco", "pro"),
    ("bright", "dark"), ("soft", "sturdy"), ("smart", "simple"), ("vintage", "sporty"),
]
NOUNS = ["set", "kit", "pack", "tool", "box", "stand", "case", "bundle"]
VARIANT_SUFFIXES = ["v2", "2-pack", "mini", "xl"]

# Random streams of the world (spawn keys under the world seed).
_ITEM_STREAM, _USER_STREAM, _LOGGING_STREAM, _HISTORY_STREAM = 0, 1, 2, 3
# Users per chunk when sampling histories (bounds the user x item matrix).
_USER_CHUNK = 1024


def stream(seed: int, key: int) -> np.random.Generator:
    """An independent generator for one purpose under a seed."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,)))


def _check(cond: bool, key: str, expected: str, value: Any) -> None:
    if not cond:
        raise SimulatorError(f"sim.{key}: expected {expected}, got {value!r}")


def check_sim_config(cfg: Any) -> None:
    """Reject a SimConfig the world cannot be built from, naming the key."""
    _check(cfg.num_items >= 1, "num_items", "an integer >= 1", cfg.num_items)
    _check(cfg.num_users >= 1, "num_users", "an integer >= 1", cfg.num_users)
    _check(cfg.num_categories >= 1, "num_categories", "an integer >= 1", cfg.num_categories)
    _check(cfg.latent_dim >= 1, "latent_dim", "an integer >= 1", cfg.latent_dim)
    _check(0 <= cfg.history_length < cfg.num_items, "history_length", "0 <= history_length < num_items",
           cfg.history_length)
    _check(1 <= cfg.page_size <= cfg.candidates_per_request, "page_size",
           f"1 <= page_size <= candidates_per_request ({cfg.candidates_per_request})", cfg.page_size)
    _check(cfg.candidates_per_request <= cfg.num_items - cfg.history_length, "candidates_per_request",
           f"at most num_items - history_length ({cfg.num_items - cfg.history_length}); "
           "candidates exclude the user's history", cfg.candidates_per_request)
    _check(cfg.position_bias >= 0, "position_bias", "a number >= 0", cfg.position_bias)
    for key in ("continue_after_click", "redundancy_penalty", "purchase_rate", "near_duplicate_fraction",
                "candidate_duplicate_rate", "query_rate"):
        value = getattr(cfg, key)
        _check(0.0 <= value <= 1.0, key, "a probability in [0, 1]", value)
    for key in ("diversity_bonus", "relevance_scale", "logging_noise", "candidate_noise", "query_boost",
                "category_weight", "latent_weight", "quality_weight"):
        value = getattr(cfg, key)
        _check(value >= 0.0, key, "a number >= 0", value)
    _check(0 < cfg.price_min <= cfg.price_max, "price_min", f"0 < price_min <= price_max ({cfg.price_max})",
           cfg.price_min)
    _check(cfg.logging_temperature > 0, "logging_temperature", "a number > 0", cfg.logging_temperature)
    _check(cfg.oracle_beam_width >= 1, "oracle_beam_width", "an integer >= 1", cfg.oracle_beam_width)
    _check(cfg.oracle_exhaustive_limit >= 0, "oracle_exhaustive_limit", "an integer >= 0",
           cfg.oracle_exhaustive_limit)


def _category_names(n: int) -> List[str]:
    if n <= len(CATEGORY_NAMES):
        return CATEGORY_NAMES[:n]
    return [f"cat{j}" for j in range(n)]


def _style_word(latent: np.ndarray) -> str:
    dim = int(np.argmax(np.abs(latent)))
    positive = bool(latent[dim] >= 0)
    if dim < len(STYLE_WORDS):
        return STYLE_WORDS[dim][0 if positive else 1]
    return f"style{dim}{'a' if positive else 'b'}"


@dataclass
class World:
    """Catalogue, users and ground truth. Build with :meth:`from_config`."""

    cfg: Any
    seed: int
    categories: List[str]
    # Items, indexed 0..I-1 (ids "i0000", ...).
    item_ids: List[str]
    item_category: np.ndarray  # (I,) int
    item_latent: np.ndarray  # (I, d)
    item_quality: np.ndarray  # (I,) standard normal
    item_price: np.ndarray  # (I,)
    item_popularity: np.ndarray  # (I,) in (0, 1)
    item_group: np.ndarray  # (I,) int; equal iff near-duplicates (or the same item)
    item_titles: List[str]
    item_attrs: List[Dict[str, Any]]
    # Users, indexed 0..U-1 (ids "u0000", ...).
    user_ids: List[str]
    user_affinity: np.ndarray  # (U, C) category affinities, zero mean, unit spread
    user_latent: np.ndarray  # (U, d)
    user_price_sensitivity: np.ndarray  # (U,)
    user_features: np.ndarray  # (U, d + 1) observable, noisy
    user_history: np.ndarray  # (U, H) item indices, oldest first
    # The logging model's systematic errors (low rank + per item).
    logging_user: np.ndarray  # (U, d)
    logging_item: np.ndarray  # (I, d)
    logging_item_bias: np.ndarray  # (I,)
    item_index: Dict[str, int] = field(default_factory=dict)
    user_index: Dict[str, int] = field(default_factory=dict)
    category_index: Dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.item_index = {iid: i for i, iid in enumerate(self.item_ids)}
        self.user_index = {uid: u for u, uid in enumerate(self.user_ids)}
        self.category_index = {name: c for c, name in enumerate(self.categories)}
        log_lo, log_hi = np.log(self.cfg.price_min), np.log(self.cfg.price_max)
        half_range = (log_hi - log_lo) / 2.0
        # Price position in [-1, 1] on a log scale; drives purchase propensity.
        self.item_price_z = (
            (np.log(self.item_price) - (log_lo + log_hi) / 2.0) / half_range
            if half_range > 0
            else np.zeros_like(self.item_price)
        )

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    # ----------------------------------------------------------- construction
    @classmethod
    def from_config(cls, sim_cfg: Any, seed: int) -> "World":
        check_sim_config(sim_cfg)
        cfg = sim_cfg
        categories = _category_names(cfg.num_categories)
        items = _make_items(cfg, categories, stream(seed, _ITEM_STREAM))
        users = _make_users(cfg, stream(seed, _USER_STREAM))
        rng_log = stream(seed, _LOGGING_STREAM)
        world = cls(
            cfg=cfg,
            seed=int(seed),
            categories=categories,
            **items,
            **users,
            user_history=np.zeros((cfg.num_users, cfg.history_length), dtype=np.int64),
            logging_user=rng_log.normal(size=(cfg.num_users, cfg.latent_dim)),
            logging_item=rng_log.normal(size=(cfg.num_items, cfg.latent_dim)),
            logging_item_bias=rng_log.normal(size=cfg.num_items),
        )
        world.user_history = _sample_histories(world, stream(seed, _HISTORY_STREAM))
        return world

    # ------------------------------------------------------------ ground truth
    def score(self, user: int, items: np.ndarray, query_category: int = -1) -> np.ndarray:
        """The user-item score s (about unit variance): the hidden "taste"."""
        cfg = self.cfg
        cats = self.item_category[items]
        latent = self.item_latent[items] @ self.user_latent[user] / np.sqrt(cfg.latent_dim)
        s = (
            cfg.category_weight * self.user_affinity[user, cats]
            + cfg.latent_weight * latent
            + cfg.quality_weight * self.item_quality[items]
        )
        if query_category >= 0:
            s = s + cfg.query_boost * (cats == query_category)
        norm = np.sqrt(cfg.category_weight**2 + cfg.latent_weight**2 + cfg.quality_weight**2)
        return s / norm if norm > 0 else s

    def relevance_logit(self, user: int, items: np.ndarray, query_category: int = -1) -> np.ndarray:
        return self.cfg.relevance_scale * self.score(user, items, query_category) + self.cfg.relevance_bias

    def click_probability(self, user: int, items: np.ndarray, query_category: int = -1) -> np.ndarray:
        """P(click | examined), before page-level effects: the true relevance."""
        return 1.0 / (1.0 + np.exp(-self.relevance_logit(user, items, query_category)))

    def purchase_probability(self, user: int, items: np.ndarray, query_category: int = -1) -> np.ndarray:
        """P(purchase | click): higher for liked items, lower for pricey ones
        (by the user's price sensitivity); averages about purchase_rate."""
        s = self.score(user, items, query_category)
        x = s - self.user_price_sensitivity[user] * self.item_price_z[items]
        return np.minimum(1.0, 2.0 * self.cfg.purchase_rate / (1.0 + np.exp(-x)))

    def logging_noise(self, user: int, items: np.ndarray) -> np.ndarray:
        """The logging model's fixed error on (user, item), about unit variance.

        Fixed rather than drawn per request so that the logging policy is a
        fixed stochastic policy whose page propensities are exact."""
        d = self.cfg.latent_dim
        low_rank = self.logging_item[items] @ self.logging_user[user] / np.sqrt(d)
        return (low_rank + self.logging_item_bias[items]) / np.sqrt(2.0)

    # ------------------------------------------------------------ data objects
    def item(self, index: int) -> Item:
        return Item(
            item_id=self.item_ids[index],
            title=self.item_titles[index],
            category=self.categories[int(self.item_category[index])],
            price=float(self.item_price[index]),
            attrs=dict(self.item_attrs[index]),
        )

    def user(self, index: int) -> User:
        history = [self.item_ids[i] for i in self.user_history[index]]
        return User(
            user_id=self.user_ids[index],
            features=[float(x) for x in self.user_features[index]],
            history=history,
            history_categories=[self.categories[int(self.item_category[i])] for i in self.user_history[index]],
        )


def _make_items(cfg: Any, categories: List[str], rng: np.random.Generator) -> Dict[str, Any]:
    n, d, n_cat = cfg.num_items, cfg.latent_dim, cfg.num_categories
    # Near-duplicate groups: pairs (one triple when the count is odd).
    n_grouped = int(round(cfg.near_duplicate_fraction * n))
    n_groups = n_grouped // 2
    n_variants = n_grouped - n_groups if n_groups else 0
    n_base = n - n_variants

    cat_centers = rng.normal(size=(n_cat, d))
    base_cat = rng.integers(0, n_cat, size=n_base)
    base_latent = 0.6 * cat_centers[base_cat] + 0.8 * rng.normal(size=(n_base, d))
    base_quality = rng.normal(size=n_base)
    base_noun = rng.integers(0, len(NOUNS), size=n_base)

    log_lo, log_hi = np.log(cfg.price_min), np.log(cfg.price_max)
    log_range = log_hi - log_lo
    cat_price = rng.uniform(log_lo + 0.3 * log_range, log_lo + 0.7 * log_range, size=n_cat)
    base_log_price = cat_price[base_cat] + 0.15 * log_range * rng.normal(size=n_base) + 0.05 * log_range * base_quality

    # Variants copy a base item with small perturbations.
    group_bases = rng.choice(n_base, size=n_groups, replace=False) if n_groups else np.zeros(0, dtype=int)
    variant_of = [int(group_bases[j % n_groups]) for j in range(n_variants)] if n_groups else []
    variant_of = np.asarray(variant_of, dtype=np.int64)
    cat = np.concatenate([base_cat, base_cat[variant_of]])
    latent = np.concatenate([base_latent, base_latent[variant_of] + 0.1 * rng.normal(size=(n_variants, d))])
    quality = np.concatenate([base_quality, base_quality[variant_of] + 0.15 * rng.normal(size=n_variants)])
    log_price = np.concatenate([base_log_price, base_log_price[variant_of] + 0.1 * rng.normal(size=n_variants)])
    group = np.concatenate([np.arange(n_base), variant_of])

    price = np.round(np.clip(np.exp(log_price), cfg.price_min, cfg.price_max), 2)
    price = np.clip(price, cfg.price_min, cfg.price_max)
    cat_pop = 0.5 * rng.normal(size=n_cat)
    popularity = 1.0 / (1.0 + np.exp(-(0.8 * quality + cat_pop[cat] + 0.5 * rng.normal(size=n))))
    rating = np.clip(np.round(3.2 + 0.7 * quality + 0.25 * rng.normal(size=n), 1), 1.0, 5.0)
    reviews = np.round(2000.0 * popularity**2 * rng.uniform(0.5, 1.5, size=n)).astype(np.int64)

    # Title words come from the base item, so near-duplicates read alike.
    edges = np.quantile(base_quality, [0.2, 0.4, 0.6, 0.8]) if n_base > 1 else np.zeros(4)
    quality_word = [QUALITY_WORDS[int(np.searchsorted(edges, q))] for q in base_quality]
    base_title = [
        f"{quality_word[b]} {_style_word(base_latent[b])} {categories[base_cat[b]]} {NOUNS[base_noun[b]]}"
        for b in range(n_base)
    ]
    suffix_rank: Dict[int, int] = {}
    titles = list(base_title)
    for b in variant_of:
        rank = suffix_rank.get(int(b), 0)
        suffix_rank[int(b)] = rank + 1
        titles.append(f"{base_title[b]} {VARIANT_SUFFIXES[rank % len(VARIANT_SUFFIXES)]}")

    # Shuffle so that ids carry no trace of the construction (variants would
    # otherwise sit at the end of the id range).
    order = rng.permutation(n)
    width = max(4, len(str(n - 1)))
    ids = [f"i{j:0{width}d}" for j in range(n)]
    new_index = np.empty(n, dtype=np.int64)
    new_index[order] = np.arange(n)  # construction index -> id index
    # A group is named by (the id of) its base item.
    group = new_index[group][order]
    attrs = [
        {"rating": float(rating[o]), "reviews": int(reviews[o]), "group": ids[int(group[j])]}
        for j, o in enumerate(order)
    ]
    return dict(
        item_ids=ids,
        item_category=cat[order].astype(np.int64),
        item_latent=latent[order],
        item_quality=quality[order],
        item_price=price[order].astype(np.float64),
        item_popularity=popularity[order],
        item_group=group.astype(np.int64),
        item_titles=[titles[o] for o in order],
        item_attrs=attrs,
    )


def _make_users(cfg: Any, rng: np.random.Generator) -> Dict[str, Any]:
    n, d, n_cat = cfg.num_users, cfg.latent_dim, cfg.num_categories
    affinity = 0.4 * rng.normal(size=(n, n_cat))
    n_fav = min(2, n_cat)
    for u in range(n):
        affinity[u, rng.choice(n_cat, size=n_fav, replace=False)] += 1.5
    affinity -= affinity.mean(axis=1, keepdims=True)
    spread = affinity.std(axis=1, keepdims=True)
    affinity = np.divide(affinity, spread, out=np.zeros_like(affinity), where=spread > 0)
    latent = rng.normal(size=(n, d))
    price_sensitivity = rng.uniform(0.5, 2.0, size=n)
    features = np.concatenate(
        [latent + 0.5 * rng.normal(size=(n, d)), (price_sensitivity + 0.2 * rng.normal(size=n))[:, None]], axis=1
    )
    width = max(4, len(str(n - 1)))
    return dict(
        user_ids=[f"u{j:0{width}d}" for j in range(n)],
        user_affinity=affinity,
        user_latent=latent,
        user_price_sensitivity=price_sensitivity,
        user_features=np.round(features, 3),
    )


def _sample_histories(world: World, rng: np.random.Generator) -> np.ndarray:
    """Each user's history: H items drawn without replacement from softmax of
    the true relevance logit (Gumbel top-H), i.e. from their real tastes."""
    cfg = world.cfg
    n_users, n_items, h = cfg.num_users, cfg.num_items, cfg.history_length
    history = np.zeros((n_users, h), dtype=np.int64)
    if h == 0:
        return history
    all_items = np.arange(n_items)
    for start in range(0, n_users, _USER_CHUNK):
        users = range(start, min(start + _USER_CHUNK, n_users))
        logits = np.stack([world.relevance_logit(u, all_items) for u in users])
        keys = logits + rng.gumbel(size=logits.shape)
        top = np.argpartition(-keys, h - 1, axis=1)[:, :h]
        rank = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
        history[start : start + len(users)] = np.take_along_axis(top, rank, axis=1)
    return history
