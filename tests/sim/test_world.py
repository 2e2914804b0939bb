"""The world: deterministic from (config, seed), well-formed, and with signal a
model can learn from the prompt."""

from __future__ import annotations

import numpy as np
import pytest

from pagerl.config.schema import SimConfig
from pagerl.sim import Simulator, SimulatorError, World
from pagerl.sim.world import QUALITY_WORDS


def test_same_seed_same_world_other_seed_other_world():
    cfg = SimConfig()
    a, b, c = World.from_config(cfg, 7), World.from_config(cfg, 7), World.from_config(cfg, 8)
    for name in ("item_category", "item_latent", "item_price", "item_group", "user_affinity", "user_history"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.item_titles == b.item_titles and a.item_attrs == b.item_attrs
    assert not np.array_equal(a.item_price, c.item_price)
    assert a.item_titles != c.item_titles


def test_more_users_leave_the_catalogue_unchanged():
    small = World.from_config(SimConfig(num_users=50), 3)
    large = World.from_config(SimConfig(num_users=500), 3)
    assert small.item_titles == large.item_titles
    assert np.array_equal(small.item_latent, large.item_latent)


def test_items_and_users_are_well_formed():
    cfg = SimConfig()
    world = World.from_config(cfg, 0)
    assert world.item_ids[:3] == ["i0000", "i0001", "i0002"] and len(set(world.item_ids)) == cfg.num_items
    assert world.user_ids[0] == "u0000" and world.num_users == cfg.num_users
    assert len(world.categories) == cfg.num_categories and world.categories[0] == "books"
    assert np.all((world.item_price >= cfg.price_min) & (world.item_price <= cfg.price_max))
    assert np.all(np.round(world.item_price, 2) == world.item_price)
    user = world.user(5)
    assert len(user.history) == cfg.history_length == len(set(user.history))
    assert user.history_categories == [world.item(world.item_index[h]).category for h in user.history]
    assert len(user.features) == cfg.latent_dim + 1
    item = world.item(0)
    assert item.category in item.title and item.title.split()[0] in QUALITY_WORDS


def test_near_duplicates_share_category_and_title_words():
    cfg = SimConfig()
    world = World.from_config(cfg, 0)
    groups = {}
    for i, g in enumerate(world.item_group.tolist()):
        groups.setdefault(g, []).append(i)
    multi = [m for m in groups.values() if len(m) > 1]
    grouped = sum(len(m) for m in multi)
    assert abs(grouped - cfg.near_duplicate_fraction * cfg.num_items) <= 1
    for members in multi:
        assert len({int(world.item_category[i]) for i in members}) == 1
        titles = [world.item_titles[i] for i in members]
        base = min(titles, key=len)
        assert all(t.startswith(base) for t in titles)
        assert len({world.item_attrs[i]["group"] for i in members}) == 1
        assert np.linalg.norm(world.item_latent[members[0]] - world.item_latent[members[1]]) < 1.0


def test_visible_signals_carry_relevance():
    """What the prompt shows (history categories, the title's quality word)
    predicts the hidden truth, so imitation and RL can beat random."""
    world = World.from_config(SimConfig(), 0)
    sim = Simulator(world)
    rng = np.random.default_rng(0)
    in_history, elsewhere = [], []
    for i in range(300):
        request = sim.sample_request(rng, f"r{i}")
        seen = set(request.user.history_categories)
        relevance = sim.true_relevance(request)
        for item in request.candidates:
            (in_history if item.category in seen else elsewhere).append(relevance[item.item_id])
    assert np.mean(in_history) > 2.0 * np.mean(elsewhere)
    word_rank = np.array([QUALITY_WORDS.index(t.split()[0]) for t in world.item_titles])
    assert np.corrcoef(word_rank, world.item_quality)[0, 1] > 0.8
    # ... but not all of it: the latent part is hidden from the prompt.
    assert SimConfig().latent_weight > 0


@pytest.mark.parametrize(
    "override,key",
    [
        ({"page_size": 20}, "sim.page_size"),
        ({"candidates_per_request": 500}, "sim.candidates_per_request"),
        ({"continue_after_click": 1.5}, "sim.continue_after_click"),
        ({"logging_temperature": 0.0}, "sim.logging_temperature"),
        ({"price_min": 0.0}, "sim.price_min"),
        ({"num_categories": 0}, "sim.num_categories"),
    ],
)
def test_bad_config_names_the_key(override, key):
    with pytest.raises(SimulatorError, match=key.replace(".", r"\.")):
        World.from_config(SimConfig(**override), 0)


def test_unknown_logging_policy_lists_the_known_ones():
    world = World.from_config(SimConfig(logging_policy="greedy_magic"), 0)
    with pytest.raises(ValueError, match=r"sim.logging_policy: unknown policy 'greedy_magic'.*noisy_softmax"):
        Simulator(world)


def test_many_categories_get_generic_names():
    world = World.from_config(SimConfig(num_categories=30, num_items=200), 0)
    assert world.categories[:2] == ["cat0", "cat1"] and len(world.categories) == 30
