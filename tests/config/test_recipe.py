"""Recipe loading: each error class names the file (and line) or override and the key."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pagerl.app.recipes import load_recipe
from pagerl.config.load import recipe_to_yaml
from pagerl.errors import RecipeError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return write(tmp_path, "base.yaml", """\
        run:
          output_dir: runs
        sim:
          page_size: 4
        """)


def test_base_chain_and_overrides(tmp_path, base):
    recipe = write(tmp_path, "exp.yaml", """\
        base: base.yaml
        run:
          name: exp
        sft:
          lr: 0.01
        """)
    cfg, where = load_recipe(recipe, ["sft.epochs=7", "eval.baselines=[random,oracle]"])
    assert cfg.run.name == "exp" and cfg.sim.page_size == 4
    assert cfg.sft.lr == 0.01 and cfg.sft.epochs == 7
    assert cfg.eval.baselines == ["random", "oracle"]
    assert where["sim.page_size"] == f"{base}:4"
    assert where["sft.lr"] == f"{recipe}:5"
    assert where["sft.epochs"] == "override 'sft.epochs=7'"
    assert cfg.base is None  # the resolved recipe stands alone
    assert "page_size: 4" in recipe_to_yaml(cfg)


def test_unknown_key_names_file_line_and_suggests(tmp_path, base):
    recipe = write(tmp_path, "exp.yaml", """\
        base: base.yaml
        run:
          name: exp
        sft:
          learning_rat: 0.1
        """)
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    msg = str(err.value)
    assert f"{recipe}:5" in msg and "'sft.learning_rat'" in msg


def test_unknown_key_suggests_closest(tmp_path):
    recipe = write(tmp_path, "exp.yaml", "run:\n  name: x\nsft:\n  epoch: 2\n")
    with pytest.raises(RecipeError, match=r"exp.yaml:4: unknown key 'sft.epoch'; did you mean 'sft.epochs'\?"):
        load_recipe(recipe)


def test_unknown_section_in_base_names_base(tmp_path):
    write(tmp_path, "base.yaml", "simulator:\n  page_size: 4\n")
    recipe = write(tmp_path, "exp.yaml", "base: base.yaml\nrun:\n  name: x\n")
    with pytest.raises(RecipeError, match=r"base.yaml:1: unknown key 'simulator'"):
        load_recipe(recipe)


def test_wrong_type(tmp_path, base):
    recipe = write(tmp_path, "exp.yaml", "base: base.yaml\nrun:\n  name: x\nsim:\n  page_size: five\n")
    with pytest.raises(RecipeError, match=r"exp.yaml:5: 'sim.page_size' expects int, got 'five'"):
        load_recipe(recipe)


def test_wrong_type_in_override(tmp_path, base):
    recipe = write(tmp_path, "exp.yaml", "base: base.yaml\nrun:\n  name: x\n")
    with pytest.raises(RecipeError, match=r"override 'sft.lr=fast': 'sft.lr' expects float"):
        load_recipe(recipe, ["sft.lr=fast"])


def test_mapping_where_value_expected(tmp_path):
    recipe = write(tmp_path, "exp.yaml", "run:\n  name: x\nsft:\n  lr:\n    value: 1\n")
    with pytest.raises(RecipeError, match=r"exp.yaml:4: 'sft.lr' expects a single value"):
        load_recipe(recipe)


def test_missing_required(tmp_path, base):
    recipe = write(tmp_path, "exp.yaml", "base: base.yaml\n")
    with pytest.raises(RecipeError, match=r"exp.yaml: required key 'run.name' is not set"):
        load_recipe(recipe)


@pytest.mark.parametrize(
    "override, key",
    [
        ("sim.page_size=13", "sim.page_size"),
        ("sim.candidates_per_request=40", "sim.candidates_per_request"),
        ("model.attn_implementation=flash_attention_2", "model.attn_implementation"),
        ("distributed.backend=nccl", "distributed.backend"),
        ("distributed.zero_stage=4", "distributed.zero_stage"),
        ("run.stages=[eval,sft]", "run.stages"),
        ("model.tiny.num_heads=3", "model.tiny.num_heads"),
        ("data.on_bad_row=ignore", "data.on_bad_row"),
        ("rl.rollout.torch_threads=-1", "rl.rollout.torch_threads"),
        ("eval.ci_level=1.0", "eval.ci_level"),
        ("rl.seed=-1", "rl.seed"),
        ("eval.bootstrap_resamples=-5", "eval.bootstrap_resamples"),
    ],
)
def test_inconsistent_combinations_name_the_key(tmp_path, base, override, key):
    recipe = write(tmp_path, "exp.yaml", "base: base.yaml\nrun:\n  name: x\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe, [override])
    assert f"override '{override}'" in str(err.value) and f"'{key}'" in str(err.value)


def test_inconsistency_set_in_file_names_file_and_line(tmp_path):
    recipe = write(tmp_path, "exp.yaml", "run:\n  name: x\n  stages: [sft]\n")
    with pytest.raises(RecipeError, match=r"'data.train_files': the sft stage needs training data"):
        load_recipe(recipe)
    recipe = write(tmp_path, "exp2.yaml", "run:\n  name: x\nsim:\n  page_size: 20\n")
    with pytest.raises(RecipeError, match=r"exp2.yaml:4: 'sim.page_size'"):
        load_recipe(recipe)


def test_several_mistakes_in_one_file_are_reported_at_once_with_their_lines(tmp_path, base):
    recipe = write(tmp_path, "exp.yaml", """\
        base: base.yaml
        run:
          name: exp
        sft:
          epoch: 2
        sim:
          page_size: five
        rl:
          steps: 0
        """)
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    assert str(err.value).splitlines() == [
        "3 problems in the recipe:",
        f"  {recipe}:5: unknown key 'sft.epoch'; did you mean 'sft.epochs'?",
        f"  {recipe}:7: 'sim.page_size' expects int, got 'five'",
        f"  {recipe}:9: 'rl.steps': expected at least 1, got 0",
    ]


def test_an_override_and_a_file_mistake_are_reported_together(tmp_path, base):
    recipe = write(tmp_path, "exp.yaml", """\
        base: base.yaml
        run:
          name: exp
        rl:
          algorithm: dpo
        """)
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe, ["sft.lr=fast", "eval.ci_level=1.5"])
    lines = str(err.value).splitlines()
    assert lines[0] == "3 problems in the recipe:"
    assert lines[1] == "  override 'sft.lr=fast': 'sft.lr' expects float, got 'fast'"
    assert lines[2].startswith("  override 'eval.ci_level=1.5': 'eval.ci_level': expected a coverage strictly between")
    assert lines[3].startswith(f"  {recipe}:5: 'rl.algorithm': expected one of 'grpo', 'ppo'")
    assert lines[3].endswith("got 'dpo'")


def test_every_wrong_type_of_a_layer_is_reported_not_only_the_first(tmp_path, base):
    recipe = write(tmp_path, "exp.yaml", """\
        base: base.yaml
        run:
          name: exp
        sim:
          page_size: five
          num_items: many
        sft:
          lr: fast
        """)
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe, ["rl.steps=x", "eval.baselines=oracle", "rl.lr=y"])
    assert str(err.value).splitlines() == [
        "6 problems in the recipe:",
        f"  {recipe}:5: 'sim.page_size' expects int, got 'five'",
        f"  {recipe}:6: 'sim.num_items' expects int, got 'many'",
        f"  {recipe}:8: 'sft.lr' expects float, got 'fast'",
        "  override 'rl.steps=x': 'rl.steps' expects int, got 'x'",
        "  override 'eval.baselines=oracle': 'eval.baselines' expects List[str], got 'oracle'",
        "  override 'rl.lr=y': 'rl.lr' expects float, got 'y'",
    ]


def test_a_missing_input_is_reported_with_the_other_mistakes(tmp_path, base):
    recipe = write(tmp_path, "exp.yaml", "base: base.yaml\nrun:\n  name: x\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe, ["data.eval_files=[nope.jsonl]", "sft.lr=0"])
    lines = str(err.value).splitlines()
    assert lines[:2] == ["2 problems in the recipe:",
                         "  override 'sft.lr=0': 'sft.lr': expected a positive learning rate, got 0.0"]
    assert lines[2].startswith("  override 'data.eval_files=[nope.jsonl]': 'data.eval_files': file not found: ")


def test_every_layer_and_every_kind_of_mistake_is_reported(tmp_path):
    write(tmp_path, "base.yaml", "simulator:\n  page_size: 4\nsim:\n  num_items: many\n")
    recipe = write(tmp_path, "exp.yaml", """\
        base: base.yaml
        sft:
          lr:
            value: 1
          epochs: two
        run:
          stages: [synth, sft, bogus]
        eval:
          num_requests: ${oc.env:HOME}
        sim:
          page_size: 20
        """)
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe, ["rl.stepz=3"])
    lines = str(err.value).splitlines()
    assert lines[0] == "9 problems in the recipe:"
    assert lines[1].startswith(f"  {tmp_path / 'base.yaml'}:1: unknown key 'simulator'; valid keys here: ablation,")
    assert lines[2] == f"  {tmp_path / 'base.yaml'}:4: 'sim.num_items' expects int, got 'many'"
    assert lines[3] == f"  {recipe}:3: 'sft.lr' expects a single value, got a mapping"
    assert lines[4] == f"  {recipe}:5: 'sft.epochs' expects int, got 'two'"
    assert lines[5].startswith(f"  {recipe}:9: 'eval.num_requests' uses an OmegaConf resolver")
    assert lines[6] == "  override 'rl.stepz=3': unknown key 'rl.stepz'; did you mean 'rl.steps'?"
    assert lines[7] == (f"  {recipe}: required key 'run.name' is not set "
                        "(set it in the recipe or its base, or override it: run.name=...)")
    assert lines[8].startswith(f"  {recipe}:7: 'run.stages': expected names from 'eval', 'rl', 'rllib'")
    assert lines[8].endswith("unknown: 'bogus'")
    assert lines[9].startswith(f"  {recipe}:11: 'sim.page_size': must be between 1 and sim.candidates_per_request")


def test_no_code_evaluation(tmp_path):
    recipe = write(tmp_path, "exp.yaml", "run:\n  name: ${oc.env:HOME}\n")
    with pytest.raises(RecipeError, match="resolver"):
        load_recipe(recipe)
    # a value that looks like code stays a string
    recipe = write(tmp_path, "exp2.yaml", "run:\n  name: __import__('os').getcwd()\n")
    cfg, _ = load_recipe(recipe)
    assert cfg.run.name == "__import__('os').getcwd()"


def test_interpolation_between_keys(tmp_path):
    recipe = write(tmp_path, "exp.yaml", "run:\n  name: x\neval:\n  num_requests: ${sim.num_eval_requests}\n")
    cfg, _ = load_recipe(recipe, ["sim.num_eval_requests=77"])
    assert cfg.eval.num_requests == 77


def test_base_cycle(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_invalid_yaml_names_line(tmp_path):
    recipe = write(tmp_path, "exp.yaml", "run:\n  name: x\n  stages: [synth\n")
    with pytest.raises(RecipeError, match=r"exp.yaml:\d+: not valid YAML"):
        load_recipe(recipe)


def test_shipped_recipes_load():
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        if path.name == "base.yaml":
            continue
        load_recipe(path)


def test_cli_config_show_and_error():
    ok = subprocess.run([sys.executable, "-m", "pagerl", "config", "show", str(REPO / "recipes/quickstart.yaml"),
                         "sft.lr=0.5"], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "lr: 0.5" in ok.stdout and "name: quickstart" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "pagerl", "config", "show", str(REPO / "recipes/quickstart.yaml"),
                          "sft.lrr=0.5"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2
    assert "error: override 'sft.lrr=0.5': unknown key 'sft.lrr'; did you mean 'sft.lr'?" in bad.stderr
    assert "Traceback" not in bad.stderr
