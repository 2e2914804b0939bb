"""Preference pairs from logged impressions and their implicit feedback.

The paper names four contrastive pair families (relevance, ranking,
diversity, redundancy) and says no more; every rule below is our own design.
A pair is two pages for the same request, ``chosen`` preferred to
``rejected``, with the slots where they differ (so the item-level model can
be trained on exactly those slots) and a weight (confidence x family weight).

Evidence. A shown item is **engaged** when it was clicked with a dwell of at
least ``pairs.min_dwell_s`` (and, with ``pairs.engagement: purchase``, also
purchased); **un-engaged** when it was not clicked; and **ambiguous** (a short
click, or a click without the purchase that was asked for) otherwise.
Ambiguous items are used neither as positives nor as negatives. A pair whose
engaged item was purchased gets confidence ``pairs.purchase_weight``.

Families (each a registered builder; ``pairs.<family>.enabled`` / ``.weight``
/ ``.max_per_impression`` switch and weigh them):

- **relevance**: the logged page > the same page with an engaged item
  replaced, in its slot, by a candidate that was not shown. Differs at that slot.
- **ranking**: the logged page > the page after swapping an engaged item with
  an un-engaged item *below* it ("demotion"); and, with
  ``pairs.ranking_skip_above``, the page with an engaged item swapped up past
  an un-engaged item *above* it > the logged page ("click > skip above", the
  classic cascade evidence). Differs at the two swapped slots.
- **diversity**: the logged page > a homogenised variant, in which the
  un-engaged items of other categories are replaced by unshown candidates of
  one category, so the page shows fewer categories. Kept only when the
  variant's category mix matches what the user engaged with (history
  categories, plus this page's engaged items counted twice) worse than the
  logged page by at least ``pairs.diversity_min_gap``; mix match is the
  overlap ``sum_c min(P_user(c), P_page(c))``. Without that gap the pair is a
  coin flip on simulated data (a homogenised page in the user's favourite
  category is often genuinely better); with it, the pair says "a page that
  covers the user's tastes beats one that collapses them". Needs at least
  ``pairs.diversity_min_evidence`` engaged items to know the user's mix.
- **redundancy**: the logged page > the page with a near-duplicate of a shown
  item inserted in place of the first un-engaged item below it (or, if none
  is below, the nearest un-engaged item above). Near-duplicates: items that
  share ``attrs["group"]`` (the simulator's parent-product id) when both have
  one; otherwise items of the same category whose lower-cased title tokens
  have a Jaccard overlap of at least ``pairs.near_duplicate_title_overlap``
  ("premium classic books set" vs "... set v2" is 0.8).

Noise handling: the thresholds above, per-impression caps (a random subset,
from a generator seeded by run seed and request id, so the same data always
gives the same pairs), label smoothing and margins in the loss
(:mod:`pagerl.rewards.rm_loop`), and de-duplication: a pair produced twice is
kept once, and with ``pairs.drop_conflicts`` two constructions that order the
same two pages both ways are both dropped. Every dropped or unbuilt pair is
counted under its family and reason in :attr:`PairSet.dropped`.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np

from pagerl.data.types import Impression, Request

FAMILIES = ("relevance", "ranking", "diversity", "redundancy")
ENGAGEMENT = ("click", "purchase")

# Slot states.
ENGAGED, UNENGAGED, AMBIGUOUS = "engaged", "unengaged", "ambiguous"


@dataclass(frozen=True)
class PreferencePair:
    """``chosen`` is preferred to ``rejected`` (both pages of ``request``)."""

    request: Request
    family: str
    chosen: Tuple[str, ...]
    rejected: Tuple[str, ...]
    # Slots where the two pages hold different items, ascending.
    slots: Tuple[int, ...]
    weight: float

    @property
    def key(self) -> Tuple[str, Tuple[str, ...], Tuple[str, ...]]:
        return (self.request.request_id, self.chosen, self.rejected)


@dataclass
class PairSet:
    """The pairs of a set of impressions and the account of what was not built."""

    pairs: List[PreferencePair] = field(default_factory=list)
    # family -> reason -> count of pairs (or impressions, for impression-level
    # reasons such as "no_engaged_item") that were not built or were dropped.
    dropped: Dict[str, Dict[str, int]] = field(default_factory=dict)
    # Evidence seen: impressions, engaged / un-engaged / ambiguous slots.
    evidence: Dict[str, int] = field(default_factory=dict)

    @property
    def counts(self) -> Dict[str, int]:
        out = Counter(p.family for p in self.pairs)
        return {f: int(out.get(f, 0)) for f in self.families}

    @property
    def families(self) -> List[str]:
        seen = list(FAMILIES)
        seen += sorted(({p.family for p in self.pairs} | set(self.dropped)) - set(FAMILIES))
        return seen

    def to_dict(self) -> Dict[str, Any]:
        return {
            "total": len(self.pairs),
            "counts": self.counts,
            "dropped": {f: dict(sorted(r.items())) for f, r in sorted(self.dropped.items())},
            "evidence": dict(self.evidence),
        }

    def summary(self) -> str:
        parts = []
        for family in self.families:
            dropped = self.dropped.get(family, {})
            why = ", ".join(f"{r} {n}" for r, n in sorted(dropped.items(), key=lambda kv: -kv[1]))
            parts.append(f"{family} {self.counts.get(family, 0)}" + (f" (not built/dropped: {why})" if why else ""))
        return f"{len(self.pairs)} pairs from {self.evidence.get('impressions', 0)} impressions: " + "; ".join(parts)


@dataclass
class _Context:
    """What every family builder needs to know about one impression."""

    impression: Impression
    state: List[str]  # per slot: ENGAGED / UNENGAGED / AMBIGUOUS
    confidence: List[float]  # per slot, for engaged slots
    unshown: List[str]  # candidates not on the page, in candidate order
    category: Dict[str, str]
    cfg: Any
    rng: np.random.Generator
    _near_dups: Optional[Dict[str, Set[str]]] = None

    @property
    def page(self) -> List[str]:
        return self.impression.page

    @property
    def request(self) -> Request:
        return self.impression.request

    def slots(self, state: str) -> List[int]:
        return [k for k, s in enumerate(self.state) if s == state]

    def near_duplicates(self) -> Dict[str, Set[str]]:
        if self._near_dups is None:
            self._near_dups = near_duplicate_sets(self.request, self.cfg.near_duplicate_title_overlap)
        return self._near_dups


# A builder returns candidate pairs as (chosen, rejected, slots, confidence)
# and counts why it built none through ``drop``.
Candidate = Tuple[List[str], List[str], Tuple[int, ...], float]
Builder = Callable[[_Context, Callable[[str, int], None]], List[Candidate]]
PAIR_FAMILIES: Dict[str, Builder] = {}


def register_pair_family(name: str) -> Callable[[Builder], Builder]:
    def wrap(fn: Builder) -> Builder:
        PAIR_FAMILIES[name] = fn
        return fn

    return wrap


# ------------------------------------------------------------------ near-duplicates
_WORD = re.compile(r"\w+")


def title_tokens(title: str) -> Set[str]:
    return set(_WORD.findall(title.lower()))


def near_duplicate_sets(request: Request, title_overlap: float) -> Dict[str, Set[str]]:
    """For each candidate, the other candidates that are its near-duplicates.

    Two items with an ``attrs["group"]`` each are near-duplicates iff the
    groups are equal; otherwise iff they share the category and their title
    tokens overlap (Jaccard) by at least ``title_overlap``.
    """
    items = request.candidates
    tokens = [title_tokens(it.title) for it in items]
    out: Dict[str, Set[str]] = {it.item_id: set() for it in items}
    for a in range(len(items)):
        for b in range(a + 1, len(items)):
            ia, ib = items[a], items[b]
            ga, gb = ia.attrs.get("group"), ib.attrs.get("group")
            if ga is not None and gb is not None:
                dup = ga == gb
            else:
                union = tokens[a] | tokens[b]
                dup = ia.category == ib.category and bool(union) and (
                    len(tokens[a] & tokens[b]) / len(union) >= title_overlap
                )
            if dup:
                out[ia.item_id].add(ib.item_id)
                out[ib.item_id].add(ia.item_id)
    return out


# ------------------------------------------------------------------ the families
def _replaced(page: Sequence[str], changes: Dict[int, str]) -> List[str]:
    out = list(page)
    for slot, item in changes.items():
        out[slot] = item
    return out


def _swapped(page: Sequence[str], a: int, b: int) -> List[str]:
    out = list(page)
    out[a], out[b] = out[b], out[a]
    return out


@register_pair_family("relevance")
def _relevance(ctx: _Context, drop: Callable[[str, int], None]) -> List[Candidate]:
    engaged = ctx.slots(ENGAGED)
    if not engaged:
        drop("no_engaged_item", 1)
        return []
    if not ctx.unshown:
        drop("no_unshown_candidate", 1)
        return []
    return [
        (list(ctx.page), _replaced(ctx.page, {k: u}), (k,), ctx.confidence[k])
        for k in engaged
        for u in ctx.unshown
    ]


@register_pair_family("ranking")
def _ranking(ctx: _Context, drop: Callable[[str, int], None]) -> List[Candidate]:
    engaged = ctx.slots(ENGAGED)
    if not engaged:
        drop("no_engaged_item", 1)
        return []
    out: List[Candidate] = []
    for k in engaged:
        for j in range(len(ctx.page)):
            if ctx.state[j] != UNENGAGED:
                continue
            if j > k:  # demotion: the engaged item moved down is worse
                out.append((list(ctx.page), _swapped(ctx.page, k, j), (k, j), ctx.confidence[k]))
            elif ctx.cfg.ranking_skip_above:  # promotion past a skipped item is better
                out.append((_swapped(ctx.page, j, k), list(ctx.page), (j, k), ctx.confidence[k]))
    if not out:
        drop("no_unengaged_partner", 1)
    return out


def _mix(categories: Iterable[str]) -> Dict[str, float]:
    counts = Counter(categories)
    total = sum(counts.values())
    return {c: n / total for c, n in counts.items()}


def _overlap(a: Dict[str, float], b: Dict[str, float]) -> float:
    return sum(min(p, b.get(c, 0.0)) for c, p in a.items())


@register_pair_family("diversity")
def _diversity(ctx: _Context, drop: Callable[[str, int], None]) -> List[Candidate]:
    cats = [ctx.category[i] for i in ctx.page]
    if len(set(cats)) < 2:
        drop("single_category_page", 1)
        return []
    engaged_cats = [cats[k] for k in ctx.slots(ENGAGED)]
    evidence = list(ctx.request.user.history_categories) + engaged_cats * 2
    if len(ctx.request.user.history_categories) + len(engaged_cats) < ctx.cfg.diversity_min_evidence:
        drop("too_little_engagement_evidence", 1)
        return []
    user_mix = _mix(evidence)
    base = _overlap(user_mix, _mix(cats))
    out: List[Candidate] = []
    variants = 0
    for target in sorted({ctx.category[u] for u in ctx.unshown}):
        pool = [u for u in ctx.unshown if ctx.category[u] == target]
        pool = [pool[i] for i in ctx.rng.permutation(len(pool))]
        changes: Dict[int, str] = {}
        for k, c in enumerate(cats):
            if ctx.state[k] == UNENGAGED and c != target and pool:
                changes[k] = pool.pop()
        if not changes:
            continue
        rejected = _replaced(ctx.page, changes)
        if len({ctx.category[i] for i in rejected}) >= len(set(cats)):
            continue
        variants += 1
        if base - _overlap(user_mix, _mix(ctx.category[i] for i in rejected)) < ctx.cfg.diversity_min_gap:
            drop("mix_gap_below_min", 1)
            continue
        out.append((list(ctx.page), rejected, tuple(sorted(changes)), 1.0))
    if variants == 0:
        drop("no_homogenised_variant", 1)
    return out


@register_pair_family("redundancy")
def _redundancy(ctx: _Context, drop: Callable[[str, int], None]) -> List[Candidate]:
    dups = ctx.near_duplicates()
    out: List[Candidate] = []
    found_dup = False
    for k, item in enumerate(ctx.page):
        twins = [u for u in ctx.unshown if u in dups.get(item, ())]
        if not twins:
            continue
        found_dup = True
        below = [j for j in range(k + 1, len(ctx.page)) if ctx.state[j] == UNENGAGED]
        above = [j for j in range(k - 1, -1, -1) if ctx.state[j] == UNENGAGED]
        target = below[0] if below else (above[0] if above else None)
        if target is None:
            drop("no_unengaged_slot", len(twins))
            continue
        for twin in twins:
            out.append((list(ctx.page), _replaced(ctx.page, {target: twin}), (target,), 1.0))
    if not found_dup:
        drop("no_near_duplicate_candidate", 1)
    return out


# ------------------------------------------------------------------ building
def _check_cfg(cfg: Any) -> None:
    if cfg.engagement not in ENGAGEMENT:
        raise ValueError(f"pairs.engagement: expected one of {ENGAGEMENT}, got {cfg.engagement!r}")
    for family in FAMILIES:
        fam = getattr(cfg, family)
        if fam.weight < 0:
            raise ValueError(f"pairs.{family}.weight: expected a number >= 0, got {fam.weight}")
        if fam.max_per_impression < 1:
            raise ValueError(f"pairs.{family}.max_per_impression: expected at least 1, got {fam.max_per_impression}")


def slot_states(imp: Impression, cfg: Any) -> Tuple[List[str], List[float]]:
    where = f"impression {imp.request.request_id!r}"
    if len(imp.feedback) != len(imp.page):
        raise ValueError(f"{where}: {len(imp.feedback)} feedback entries for a page of {len(imp.page)} items")
    states, confidence = [], []
    for slot, (item, fb) in enumerate(zip(imp.page, imp.feedback)):
        if fb.item_id != item:
            raise ValueError(f"{where}: feedback[{slot}] is for {fb.item_id!r}, but slot {slot} shows {item!r}")
        if not fb.click:
            states.append(UNENGAGED)
        elif fb.dwell < cfg.min_dwell_s or (cfg.engagement == "purchase" and not fb.purchase):
            states.append(AMBIGUOUS)
        else:
            states.append(ENGAGED)
        confidence.append(float(cfg.purchase_weight) if fb.purchase else 1.0)
    return states, confidence


def _rng_for(seed: int, request_id: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(request_id.encode("utf-8"))])


def build_pairs(impressions: Sequence[Impression], cfg: Any, seed: int) -> PairSet:
    """All enabled families' pairs of ``impressions`` under ``cfg`` (a ``PairsConfig``).

    Deterministic: each impression draws from a generator seeded by ``seed``
    and its request id, so the result does not depend on the order of the
    impressions or on the other families.
    """
    _check_cfg(cfg)
    result = PairSet()
    evidence: Counter = Counter()
    dropped: Dict[str, Counter] = {f: Counter() for f in FAMILIES}
    enabled = [f for f in FAMILIES if getattr(cfg, f).enabled]
    built: List[PreferencePair] = []
    for imp in impressions:
        states, confidence = slot_states(imp, cfg)
        evidence["impressions"] += 1
        evidence.update(states)
        if ENGAGED in states:
            evidence["impressions_with_engagement"] += 1
        shown = set(imp.page)
        ctx = _Context(
            impression=imp,
            state=states,
            confidence=confidence,
            unshown=[c.item_id for c in imp.request.candidates if c.item_id not in shown],
            category={c.item_id: c.category for c in imp.request.candidates},
            cfg=cfg,
            rng=_rng_for(seed, imp.request.request_id),
        )
        for family in enabled:
            fam_cfg = getattr(cfg, family)
            counter = dropped[family]
            candidates = PAIR_FAMILIES[family](ctx, lambda reason, n, c=counter: c.update({reason: n}))
            if len(candidates) > fam_cfg.max_per_impression:
                counter["over_per_impression_cap"] += len(candidates) - fam_cfg.max_per_impression
                keep = ctx.rng.choice(len(candidates), size=fam_cfg.max_per_impression, replace=False)
                candidates = [candidates[i] for i in sorted(keep.tolist())]
            for chosen, rejected, slots, conf in candidates:
                built.append(PreferencePair(
                    request=imp.request, family=family, chosen=tuple(chosen), rejected=tuple(rejected),
                    slots=tuple(slots), weight=float(conf) * float(fam_cfg.weight),
                ))
    result.pairs = _deduplicate(built, dropped, cfg.drop_conflicts)
    result.dropped = {f: dict(c) for f, c in dropped.items() if c}
    for family in FAMILIES:
        if family not in enabled:
            result.dropped.setdefault(family, {})["disabled"] = 1
    result.evidence = {
        "impressions": int(evidence["impressions"]),
        "impressions_with_engagement": int(evidence["impressions_with_engagement"]),
        "engaged_slots": int(evidence[ENGAGED]),
        "unengaged_slots": int(evidence[UNENGAGED]),
        "ambiguous_slots": int(evidence[AMBIGUOUS]),
    }
    return result


def _deduplicate(pairs: List[PreferencePair], dropped: Dict[str, Counter], drop_conflicts: bool) -> List[PreferencePair]:
    """Keep the first of identical pairs (with the largest weight); drop contradictions."""
    first: Dict[Tuple, int] = {}
    kept: List[Optional[PreferencePair]] = []
    for pair in pairs:
        index = first.get(pair.key)
        if index is not None:
            dropped[pair.family]["duplicate"] += 1
            if pair.weight > kept[index].weight:  # type: ignore[union-attr]
                kept[index] = PreferencePair(**{**kept[index].__dict__, "weight": pair.weight})  # type: ignore[union-attr]
            continue
        first[pair.key] = len(kept)
        kept.append(pair)
    if drop_conflicts:
        for key, index in first.items():
            reverse = first.get((key[0], key[2], key[1]))
            if reverse is not None and kept[index] is not None:
                dropped[kept[index].family]["conflict"] += 1  # type: ignore[union-attr]
                kept[index] = None
                if kept[reverse] is not None:
                    dropped[kept[reverse].family]["conflict"] += 1  # type: ignore[union-attr]
                    kept[reverse] = None
    return [p for p in kept if p is not None]
