"""The shared registries: duplicate names and keys refused, unknown names listed; the
algorithm table and the check of the rl keys."""

from __future__ import annotations

import pytest

from pagerl.config.schema import KLConfig, RLConfig, RolloutConfig
from pagerl.registry import REGISTRIES, registry_of
from pagerl.rl.algorithms import (
    ADVANTAGE_ESTIMATORS,
    ALGORITHMS,
    Registry,
    grpo,
    lookup,
    register,
    resolve_algorithm,
)


def test_duplicate_registration_is_refused_naming_registry_and_name():
    things = Registry("rl.things")
    register(things, "a")(len)
    with pytest.raises(ValueError, match=r"rl\.things: 'a' is already registered"):
        register(things, "a")(abs)
    assert things["a"] is len
    with pytest.raises(ValueError, match="'grpo' is already registered"):
        register(ADVANTAGE_ESTIMATORS, "grpo")(abs)
    assert ADVANTAGE_ESTIMATORS["grpo"] is grpo


def test_registries_are_indexed_by_key_and_no_two_share_one():
    assert REGISTRIES["rl.algorithm"] is ALGORITHMS and registry_of("rl.algorithm") is ALGORITHMS
    assert registry_of("rl.no_such_key") is None
    with pytest.raises(ValueError, match=r"a registry with key 'rl\.algorithm' exists already"):
        Registry("rl.algorithm")
    assert REGISTRIES["rl.algorithm"] is ALGORITHMS


def test_lookup_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"rl\.algorithm: unknown 'dpo'; expected one of \['grpo', 'ppo'"):
        lookup(ALGORITHMS, "dpo")


def test_algorithms():
    assert sorted(ALGORITHMS) == ["grpo", "ppo", "reinforce_pp", "reinforce_pp_baseline", "rloo"]
    ppo = ALGORITHMS["ppo"]
    assert (ppo.advantage, ppo.needs_critic, ppo.needs_groups) == ("gae", True, False)
    assert {n for n, a in ALGORITHMS.items() if a.needs_groups} == {"grpo", "rloo"}
    assert {n for n, a in ALGORITHMS.items() if a.needs_critic} == {"ppo"}
    for algorithm in ALGORITHMS.values():
        assert algorithm.estimator is ADVANTAGE_ESTIMATORS[algorithm.advantage]


def test_resolve_algorithm_checks_the_rl_keys():
    assert resolve_algorithm(RLConfig(algorithm="ppo")).name == "ppo"
    with pytest.raises(ValueError, match="samples_per_request"):
        resolve_algorithm(RLConfig(algorithm="rloo", rollout=RolloutConfig(samples_per_request=1)))
    assert resolve_algorithm(RLConfig(algorithm="reinforce_pp", rollout=RolloutConfig(samples_per_request=1)))
    with pytest.raises(ValueError, match="rl.loss_agg"):
        resolve_algorithm(RLConfig(loss_agg="sum"))
    with pytest.raises(ValueError, match="rl.kl.mode"):
        resolve_algorithm(RLConfig(kl=KLConfig(mode="both")))
    with pytest.raises(ValueError, match="rl.clip_low"):
        resolve_algorithm(RLConfig(clip_low=1.5))
