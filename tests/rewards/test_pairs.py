"""Preference pairs on hand-made pages and feedback: one test per family, with the cases that must yield none."""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

import pytest

from pagerl.config.schema import PairsConfig
from pagerl.data.types import Impression, Item, ItemFeedback, Request, User
from pagerl.rewards.pairs import build_pairs, near_duplicate_sets

# id -> (category, title, group)
CATALOGUE = {
    "a": ("books", "deluxe classic books set", "a"),
    "b": ("books", "basic modern books kit", "b"),
    "c": ("toys", "premium rugged toys box", "c"),
    "d": ("toys", "budget eco toys pack", "d"),
    "e": ("books", "standard soft books case", "e"),
    "f": ("books", "deluxe classic books set v2", "a"),  # near-duplicate of "a"
    "g": ("garden", "premium smart garden tool", "g"),
}


def item(iid: str, group: bool = True) -> Item:
    category, title, grp = CATALOGUE[iid]
    return Item(item_id=iid, title=title, category=category, price=20.0, attrs={"group": grp} if group else {})


def impression(page: Sequence[str], clicks: Sequence[int], candidates: str = "abcdefg", *,
               history: Sequence[str] = ("books", "toys", "books", "toys"), request_id: str = "r1",
               purchases: Optional[Sequence[int]] = None, dwell: float = 30.0, groups: bool = True) -> Impression:
    request = Request(
        request_id=request_id,
        user=User(user_id="u1", history_categories=list(history)),
        candidates=[item(i, groups) for i in candidates],
        page_size=len(page),
    )
    purchases = purchases or [0] * len(page)
    feedback = [ItemFeedback(item_id=i, click=c, purchase=p, dwell=dwell if c else 0.0)
                for i, c, p in zip(page, clicks, purchases)]
    return Impression(request=request, page=list(page), feedback=feedback)


def only(family: str, **changes) -> PairsConfig:
    cfg = PairsConfig(**changes)
    for name in ("relevance", "ranking", "diversity", "redundancy"):
        fam = getattr(cfg, name)
        fam.enabled = name == family
        fam.max_per_impression = 100
    return cfg


def as_tuples(pairs) -> List[tuple]:
    return sorted((p.chosen, p.rejected, p.slots) for p in pairs)


# ------------------------------------------------------------------ relevance
def test_relevance_engaged_item_beats_each_unshown_candidate_in_its_slot():
    imp = impression("abc", [0, 1, 0], candidates="abcde")
    result = build_pairs([imp], only("relevance"), seed=0)
    assert as_tuples(result.pairs) == [
        (("a", "b", "c"), ("a", "d", "c"), (1,)),
        (("a", "b", "c"), ("a", "e", "c"), (1,)),
    ]
    assert all(p.family == "relevance" and p.weight == 1.0 for p in result.pairs)
    assert result.counts["relevance"] == 2


def test_relevance_yields_nothing_without_evidence():
    cfg = only("relevance")
    no_click = build_pairs([impression("abc", [0, 0, 0], candidates="abcde")], cfg, seed=0)
    assert no_click.pairs == [] and no_click.dropped["relevance"]["no_engaged_item"] == 1
    everything_shown = build_pairs([impression("abc", [1, 0, 0], candidates="abc")], cfg, seed=0)
    assert everything_shown.pairs == [] and everything_shown.dropped["relevance"]["no_unshown_candidate"] == 1
    # a click shorter than pairs.min_dwell_s is a misclick: ambiguous, not engagement
    short = build_pairs([impression("abc", [0, 1, 0], candidates="abcde", dwell=2.0)],
                        only("relevance", min_dwell_s=5.0), seed=0)
    assert short.pairs == [] and short.evidence["ambiguous_slots"] == 1
    # engagement=purchase: a click without purchase is not enough
    unbought = build_pairs([impression("abc", [0, 1, 0], candidates="abcde")],
                           only("relevance", engagement="purchase"), seed=0)
    assert unbought.pairs == []


def test_purchase_confidence_and_family_weight_multiply():
    cfg = only("relevance", purchase_weight=2.0)
    cfg.relevance.weight = 0.5
    result = build_pairs([impression("abc", [0, 1, 0], candidates="abcd", purchases=[0, 1, 0])], cfg, seed=0)
    assert [p.weight for p in result.pairs] == [1.0]


# ------------------------------------------------------------------ ranking
def test_ranking_demotion_and_click_over_skip_above():
    # engaged item on top: moving it down past un-engaged items is worse
    top = build_pairs([impression("abc", [1, 0, 0])], only("ranking"), seed=0)
    assert as_tuples(top.pairs) == [
        (("a", "b", "c"), ("b", "a", "c"), (0, 1)),
        (("a", "b", "c"), ("c", "b", "a"), (0, 2)),
    ]
    # engaged item at the bottom: moving it up past the skipped items is better
    bottom = build_pairs([impression("abc", [0, 0, 1])], only("ranking"), seed=0)
    assert as_tuples(bottom.pairs) == [
        (("a", "c", "b"), ("a", "b", "c"), (1, 2)),
        (("c", "b", "a"), ("a", "b", "c"), (0, 2)),
    ]
    no_skip_above = build_pairs([impression("abc", [0, 0, 1])], only("ranking", ranking_skip_above=False), seed=0)
    assert no_skip_above.pairs == [] and no_skip_above.dropped["ranking"]["no_unengaged_partner"] == 1


def test_ranking_yields_nothing_when_all_or_none_engaged():
    cfg = only("ranking")
    assert build_pairs([impression("abc", [1, 1, 1])], cfg, seed=0).pairs == []
    none = build_pairs([impression("abc", [0, 0, 0])], cfg, seed=0)
    assert none.pairs == [] and none.dropped["ranking"]["no_engaged_item"] == 1


# ------------------------------------------------------------------ diversity
def test_diversity_mixed_page_beats_its_homogenised_variant():
    # the user engages with books and toys; the page shows both; homogenising
    # into books (the un-engaged toy replaced by an unshown book) loses the mix
    imp = impression("acb", [1, 0, 0], candidates="abcdeg")
    result = build_pairs([imp], only("diversity"), seed=0)
    # into books: the toy (slot 1) becomes the unshown book "e"; the engaged
    # "a" stays. Into toys or garden the page would keep two categories: no pair.
    assert as_tuples(result.pairs) == [(("a", "c", "b"), ("a", "e", "b"), (1,))]


def test_diversity_yields_nothing_without_a_mix_to_lose():
    cfg = only("diversity")
    single = build_pairs([impression("abe", [1, 0, 0], candidates="abcdeg")], cfg, seed=0)
    assert single.pairs == [] and single.dropped["diversity"]["single_category_page"] == 1
    # a books-only user: a page homogenised into books matches them *better*
    books_fan = build_pairs([impression("acb", [1, 0, 0], candidates="abce", history=["books"] * 6)], cfg, seed=0)
    assert books_fan.pairs == [] and books_fan.dropped["diversity"]["mix_gap_below_min"] >= 1
    # nothing unshown to homogenise with
    full = build_pairs([impression("acb", [1, 0, 0], candidates="abc")], cfg, seed=0)
    assert full.pairs == [] and full.dropped["diversity"]["no_homogenised_variant"] == 1
    # too little engagement evidence to know the user's mix
    unknown = build_pairs([impression("acb", [0, 0, 0], candidates="abcdeg", history=["books"])], cfg, seed=0)
    assert unknown.pairs == [] and unknown.dropped["diversity"]["too_little_engagement_evidence"] == 1


# ------------------------------------------------------------------ redundancy
def test_redundancy_page_beats_it_with_a_near_duplicate_inserted():
    # "f" is a near-duplicate of "a" (same group); it goes in place of the
    # first un-engaged item below "a"
    result = build_pairs([impression("abc", [1, 0, 0], candidates="abcdf")], only("redundancy"), seed=0)
    assert as_tuples(result.pairs) == [(("a", "b", "c"), ("a", "f", "c"), (1,))]
    # nothing un-engaged below: the nearest un-engaged slot above
    above = build_pairs([impression("cba", [0, 1, 1], candidates="abcdf")], only("redundancy"), seed=0)
    assert as_tuples(above.pairs) == [(("c", "b", "a"), ("f", "b", "a"), (0,))]


def test_redundancy_yields_nothing_without_a_near_duplicate():
    cfg = only("redundancy")
    none = build_pairs([impression("abc", [1, 0, 0], candidates="abcde")], cfg, seed=0)
    assert none.pairs == [] and none.dropped["redundancy"]["no_near_duplicate_candidate"] == 1
    no_slot = build_pairs([impression("abc", [1, 1, 1], candidates="abcf")], cfg, seed=0)
    assert no_slot.pairs == [] and no_slot.dropped["redundancy"]["no_unengaged_slot"] == 1


def test_near_duplicates_without_groups_use_category_and_title_overlap():
    imp = impression("abc", [0, 0, 0], candidates="abcdef", groups=False)
    dups = near_duplicate_sets(imp.request, title_overlap=0.75)
    assert dups["a"] == {"f"} and dups["f"] == {"a"}  # 4 of 5 title tokens shared, same category
    assert dups["b"] == set() and dups["c"] == set()
    assert near_duplicate_sets(imp.request, title_overlap=0.9)["a"] == set()


# ------------------------------------------------------------------ de-duplication, caps, determinism
def test_duplicates_are_merged_and_contradictions_dropped():
    cfg = only("ranking")
    # the same evidence twice for one request gives each pair once
    twice = build_pairs([impression("ab", [1, 0], candidates="abc")] * 2, cfg, seed=0)
    assert as_tuples(twice.pairs) == [(("a", "b"), ("b", "a"), (0, 1))]
    assert twice.dropped["ranking"]["duplicate"] == 1
    # two logged visits of one request that order the same two pages both ways
    first = impression("ab", [1, 0], candidates="abc")
    second = impression("ba", [1, 0], candidates="abc")
    both = build_pairs([first, second], cfg, seed=0)
    assert both.pairs == [] and both.dropped["ranking"]["conflict"] == 2
    kept = build_pairs([first, second], only("ranking", drop_conflicts=False), seed=0)
    assert len(kept.pairs) == 2


def test_cap_is_a_deterministic_order_free_sample():
    cfg = PairsConfig()
    imps = [impression("acb", [1, 0, 1], candidates="abcdefg", request_id=f"r{i}") for i in range(5)]
    one = build_pairs(imps, cfg, seed=3)
    again = build_pairs(list(reversed(imps)), cfg, seed=3)
    assert sorted(p.key for p in one.pairs) == sorted(p.key for p in again.pairs)
    for family in ("relevance", "ranking", "diversity", "redundancy"):
        per_request: Dict[str, int] = {}
        for p in one.pairs:
            if p.family == family:
                per_request[p.request.request_id] = per_request.get(p.request.request_id, 0) + 1
        assert max(per_request.values(), default=0) <= getattr(cfg, family).max_per_impression
    assert one.dropped["relevance"]["over_per_impression_cap"] > 0
    summary = one.summary()
    assert "relevance" in summary and "over_per_impression_cap" in summary


def test_disabled_family_is_reported_and_bad_feedback_is_named():
    result = build_pairs([impression("abc", [1, 0, 0])], only("relevance"), seed=0)
    assert result.dropped["ranking"] == {"disabled": 1}
    bad = impression("abc", [1, 0, 0])
    bad.feedback[1] = dataclasses.replace(bad.feedback[1], item_id="zz")
    with pytest.raises(ValueError, match=r"'r1'.*feedback\[1\]"):
        build_pairs([bad], PairsConfig(), seed=0)
