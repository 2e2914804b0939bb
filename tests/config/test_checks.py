"""Single-field checks on the schema's fields, and the one loop over registry-valued keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import pagerl.app.recipes  # noqa: F401  (every registry and rule in place)
from pagerl.app.recipes import load_recipe
from pagerl.config.checks import (
    CHECKS,
    RegistryNotLoadedError,
    at_least,
    between,
    field_findings,
    one_of,
    positive,
    registry_keys,
    schema_fields,
)
from pagerl.config.schema import RecipeConfig
from pagerl.errors import RecipeError
from pagerl.registry import REGISTRIES

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "ci_small.yaml"
SCHEMA_KEYS = {key: f for key, f in schema_fields(RecipeConfig)}
MARKED = registry_keys(RecipeConfig)


def test_the_schema_is_still_a_structured_config_whose_defaults_pass_their_checks():
    cfg = OmegaConf.structured(RecipeConfig)
    assert cfg.rl.algorithm == "grpo" and cfg.run.stages == ["synth", "sft", "eval"]
    assert field_findings(RecipeConfig()) == []
    checked = [key for key, f in SCHEMA_KEYS.items() if f.metadata.get(CHECKS)]
    assert len(checked) > 80 and all(callable(c) for key in checked for c in SCHEMA_KEYS[key].metadata[CHECKS])


def test_check_helpers_say_what_was_expected_and_what_came():
    assert at_least(1)(0) == "expected at least 1, got 0"
    assert at_least(0)(-2) == "expected 0 or more, got -2"
    assert at_least(10, "at least 10 seconds")(3) == "expected at least 10 seconds, got 3"
    assert positive("a positive learning rate")(0.0) == "expected a positive learning rate, got 0.0"
    assert between(0.0, 0.5, high_open=True)(0.5) == "expected a value in [0, 0.5), got 0.5"
    assert between(0.0, 1.0, low_open=True)(0.0) == "expected a value in (0, 1], got 0.0"
    assert between(0.0, 1.0, low_open=True)(1.0) is None
    assert one_of("skip", "error")("ignore") == "expected one of 'skip', 'error', got 'ignore'"
    assert one_of(1, 2, 3)(2) is None


@pytest.mark.parametrize("override, key, message", [
    ("sft.grad_accum_steps=0", "sft.grad_accum_steps", "expected at least 1, got 0"),
    ("sft.lr=0", "sft.lr", "expected a positive learning rate, got 0.0"),
    ("distributed.timeout_s=5", "distributed.timeout_s", "expected at least 10 seconds, got 5"),
    ("distributed.zero_stage=4", "distributed.zero_stage", "expected one of 1, 2, 3, got 4"),
    ("model.dtype=float64", "model.dtype", "expected one of 'float32', 'bfloat16', 'float16', got 'float64'"),
    ("pairs.diversity.weight=-1", "pairs.diversity.weight", "expected a number >= 0, got -1.0"),
    ("rm.label_smoothing=0.5", "rm.label_smoothing", "expected a value in [0, 0.5), got 0.5"),
    ("rl.rollout.top_p=0", "rl.rollout.top_p", "expected a value in (0, 1], got 0.0"),
    ("rl.off_policy.mask_threshold=1", "rl.off_policy.mask_threshold", "expected more than 1, got 1.0"),
    ("rl.rollout.constrained=false", "rl.rollout.constrained", "the RL stage needs constrained rollouts"),
    ("ablation.seeds=[]", "ablation.seeds", "expected at least one value of rl.seed"),
    ("ablation.seeds=[2,-1]", "ablation.seeds", "expected distinct values of rl.seed, 0 or more, got [2, -1]"),
    ("rllib.hidden_sizes=[64,0]", "rllib.hidden_sizes", "expected one or more layer widths, each at least 1"),
    ("tracking.mlflow_experiment=' '", "tracking.mlflow_experiment", "expected an MLflow experiment name"),
])
def test_a_field_check_names_the_override_the_key_and_what_was_expected(override, key, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(RECIPE, [override])
    assert str(err.value).startswith(f"override '{override}': '{key}': {message}")


def test_a_value_its_field_refuses_is_not_also_reported_by_a_rule():
    # rl.trainer.num_ranks=0 would also break the batch-divisibility rule (a division by zero)
    with pytest.raises(RecipeError) as err:
        load_recipe(RECIPE, ["rl.trainer.num_ranks=0", "run.stages=[synth,sft,rl,eval]"])
    assert str(err.value) == "override 'rl.trainer.num_ranks=0': 'rl.trainer.num_ranks': expected at least 1, got 0"


# ------------------------------------------------------------------ registry-valued keys
@pytest.mark.parametrize("key", sorted(MARKED))
def test_every_registry_valued_key_refuses_a_name_its_registry_lacks(key):
    """Each marked key is really checked: a bogus name is refused, once, naming the key and listing
    every valid name (with rl among the stages, so the rules that read rl.* run too)."""
    registry = REGISTRIES[MARKED[key]]
    is_list = SCHEMA_KEYS[key].type.startswith("List")
    override = f"{key}=[no_such_name]" if is_list else f"{key}=no_such_name"
    with pytest.raises(RecipeError) as err:
        load_recipe(RECIPE, ["run.stages=[synth,sft,rm,rl,eval]", override])
    message = str(err.value)
    assert message.startswith(f"override '{override}': '{key}': expected ")
    assert "\n" not in message  # one problem: no rule repeats it
    assert "'no_such_name'" in message
    for name in registry:
        assert repr(name) in message


def test_every_registry_of_a_recipe_key_is_marked_on_that_key_s_field():
    """A new registry whose key is a recipe key cannot be forgotten by the loader."""
    of_recipe_keys = {key for key in REGISTRIES if key in SCHEMA_KEYS}
    assert of_recipe_keys == set(MARKED), "mark these fields with registered(...) in the schema"
    assert all(MARKED[key] == key for key in MARKED)
    assert {"run.stages", "env.name", "rewards.source", "rl.algorithm", "eval.baselines"} <= of_recipe_keys
    # registries that are not recipe keys stay out of the loop
    assert "advantage estimator" in REGISTRIES and "policy kind" in REGISTRIES


def test_a_registry_that_is_not_loaded_is_a_programming_error(monkeypatch):
    monkeypatch.delitem(REGISTRIES, "rl.kl.estimator")
    expected = r"'rl\.kl\.estimator'.*not loaded.*pagerl\.app\.recipes\.load_recipe"
    with pytest.raises(RegistryNotLoadedError, match=expected):
        load_recipe(RECIPE)


def test_every_marked_field_holds_names():
    for key in MARKED:
        f = SCHEMA_KEYS[key]
        assert f.type in ("str", "List[str]"), (key, f.type)
        assert not dataclasses.is_dataclass(f.type)
