"""The ablation spec: variants laid over base, the budget in steps, refusals at the start."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fineflow.ablation import BASE, AblationSpec, load_spec, nested, tokens_per_step

SPEC = Path(__file__).resolve().parents[2] / "fineflow" / "ablations" / "sample.yaml"


def spec(**over) -> AblationSpec:
    tree = {"variants": {"no-c4": {"filter.c4.enabled": False}}, "tokens": 100_000, **over}
    return AblationSpec.model_validate(tree)


def test_dotted_and_nested_overrides_merge():
    assert nested({"a.b": 1, "a": {"c": {"d": 2}}, "a.c.e": 3, "x": 4}) == {
        "a": {"b": 1, "c": {"d": 2, "e": 3}},
        "x": 4,
    }


def test_variants_are_base_with_their_overrides():
    s = spec(base={"train": {"lr": 0.001}}, variants={"no-c4": {"filter.c4.enabled": False}})
    configs = s.configs()
    assert list(configs) == [BASE, "no-c4"]
    assert configs[BASE].filter.c4.enabled and not configs["no-c4"].filter.c4.enabled
    assert {c.train.lr for c in configs.values()} == {0.001}  # base reaches every variant
    # what the spec decides: the held-out clusters and the step count from the budget
    assert {c.shard.val_fraction for c in configs.values()} == {s.eval.fraction}
    per_step = tokens_per_step(configs[BASE])
    assert per_step == 16 * 128
    assert configs[BASE].train.steps == -(-100_000 // per_step)  # rounds up
    assert [s.seeded(configs[BASE], i).train.seed for i in range(3)] == [1337, 1338, 1339]


def test_equal_budgets_across_batch_shapes():
    s = spec(variants={"small-batch": {"train.batch_size": 4}})
    cfgs = s.configs()
    tokens = {n: c.train.steps * tokens_per_step(c) for n, c in cfgs.items()}
    assert cfgs["small-batch"].train.steps == 4 * cfgs[BASE].train.steps
    assert all(100_000 <= t < 100_000 + tokens_per_step(cfgs[n]) for n, t in tokens.items())


@pytest.mark.parametrize(
    ("variants", "said"),
    [
        ({"x": {"train.steps": 5}}, "variants.x.train.steps: `tokens` sets train.steps"),
        ({"x": {"train": {"seed": 5}}}, "`seeds` sets train.seed"),
        ({"x": {"shard.val_fraction": 0.5}}, "eval.fraction sets shard.val_fraction"),
        ({"x": {"data_root": "/tmp/elsewhere"}}, "every variant shares the data root"),
        ({"x": {"filter.gopher.enabled": False}}, "variant x: filter.gopher: Extra inputs"),
        ({"x": {"dedup.scope": "nowhere"}}, "variant x: dedup.scope"),
        ({"base": {}}, "'base' is the base config itself"),
        ({"../x": {}}, "variant name '../x'"),
    ],
)
def test_a_bad_spec_fails_at_the_start_naming_the_variant_and_field(variants, said):
    with pytest.raises(ValidationError, match=None) as err:
        spec(variants=variants)
    assert said in str(err.value)


def test_too_small_a_budget_names_warmup():
    with pytest.raises(ValidationError) as err:
        spec(tokens=1000)
    assert "variant base: train" in str(err.value) and "warmup_steps" in str(err.value)


def test_the_bundled_sample_spec_reads(tmp_path):
    s = load_spec(SPEC)
    assert len(s.variants) == 3 and s.seeds == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="wants a mapping"):
        load_spec(bad)


def test_the_deployment_runs_the_bundled_spec():
    import yaml

    from fineflow.config import PRESETS_FILE

    deployments = yaml.safe_load(PRESETS_FILE.read_text())["deployments"]
    (dep,) = [d for d in deployments if d["name"] == "ablate-sample"]
    assert dep["entrypoint"] == "flows/ablate.py:ablate"
    assert AblationSpec.model_validate(dep["parameters"]["spec"]) == load_spec(SPEC)


def test_the_cli_refuses_a_bad_spec_naming_the_field(tmp_path, capsys):
    from fineflow.cli import main

    bad = tmp_path / "spec.yaml"
    bad.write_text("tokens: 100000\nvariants: {x: {filter.c4.enabld: false}}\n")
    assert main(["ablate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "variant x: filter.c4.enabld" in err and str(bad) in err
    assert main(["ablate", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
