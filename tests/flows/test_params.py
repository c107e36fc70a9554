import dataclasses
from pathlib import Path

import pytest

from synthaug.flows.params import Params, ParamsError, dump_params, load_params

REPO = Path(__file__).resolve().parents[2]


def test_repo_params_yaml_states_the_project_choices_and_resolves_to_the_defaults():
    params = load_params(REPO / "params.yaml")
    assert params.data.source == "example:digits"
    assert params.model.family in ("diffusion", "gan", "vae")
    # The committed file lists the project's choices (`dvc exp show` has a column per key of it), and they equal the
    # code's defaults, so neither drifts from the other; docs/params.md lists every key.
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params == Params()
    assert set(raw) <= set(Params.model_fields) and sum(1 for _ in _leaves(raw)) <= 20


def _leaves(tree):
    for value in tree.values():
        if isinstance(value, dict):
            yield from _leaves(value)
        else:
            yield value


def test_synthaug_params_prints_every_key_as_resolved(tmp_path):
    from typer.testing import CliRunner

    from synthaug.flows.cli import app

    path = tmp_path / "params.yaml"
    path.write_text("plan:\n  strategy: target\n")
    done = CliRunner().invoke(app, ["params", "-p", str(path), "-S", "model.family=vae"])
    assert done.exit_code == 0, done.output
    import yaml

    shown = yaml.safe_load(done.output)
    assert shown == load_params(path, ["model.family=vae"]).model_dump(mode="json")
    assert shown["plan"]["strategy"] == "target" and shown["model"]["family"] == "vae"
    assert shown["model"]["vae"]["steps"] == Params().model.vae.steps  # a key in neither: its default


def test_unknown_key_names_key_and_allowed_keys(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("plan:\n  stratgy: target\n")
    with pytest.raises(ParamsError) as err:
        load_params(f)
    msg = str(err.value)
    assert "plan.stratgy" in msg and "strategy" in msg and "overgenerate" in msg


def test_unknown_section_is_rejected():
    with pytest.raises(ParamsError, match=r"unknown key 'datta'.*data"):
        load_params(None, ["datta.source=x"])


def test_wrong_type_and_bad_choice_name_the_key():
    with pytest.raises(ParamsError, match=r"data.image_size: .*integer.*'big'"):
        load_params(None, ["data.image_size=big"])
    with pytest.raises(ParamsError, match=r"plan.strategy: .*'match_majority', 'target', 'ratio' or 'release'"):
        load_params(None, ["plan.strategy=most"])
    with pytest.raises(ParamsError, match=r"model.family.*diffusion, gan, latent_diffusion, vae"):
        load_params(None, ["model.family=flow"])


def test_overrides_apply_in_order_with_yaml_typing():
    params = load_params(None, ["data.source=/tmp/x", "plan.target=7", "plan.target=9", "data.rev=123",
                                "data.repo=null", "model.family=gan"])
    assert params.data.source == "/tmp/x"
    assert params.plan.target == 9
    assert params.data.rev == "123"  # a string field keeps a numeric-looking revision as text
    assert params.data.repo is None
    assert params.model.family == "gan"


def test_nested_family_override_reaches_the_family_config():
    params = load_params(None, ["model.family=vae", "model.vae.steps=3"])
    assert params.model.family_config().steps == 3
    with pytest.raises(ParamsError, match=r"unknown key 'model.vae.stepz'.*steps"):
        load_params(None, ["model.vae.stepz=3"])


@pytest.mark.parametrize("bad", ["data.source", "=3", "source=x"])
def test_malformed_override_is_explained(bad):
    with pytest.raises(ParamsError, match="override"):
        load_params(None, [bad])


def test_a_sub_section_given_in_part_keeps_the_section_defaults(tmp_path):
    """evaluate.classifier's defaults are the small downstream classifier, not JudgeConfig's own: overriding one
    key of it (or giving part of it in a file) must not swap in the bare type's other defaults."""
    defaults = load_params(None).evaluate.classifier
    seeded = load_params(None, ["evaluate.classifier.seed=1000"]).evaluate.classifier
    assert seeded == dataclasses.replace(defaults, seed=1000)
    path = tmp_path / "params.yaml"
    path.write_text("evaluate:\n  classifier:\n    steps: 50\nfilter:\n  judge:\n    lr: 0.01\n")
    loaded = load_params(path)
    assert loaded.evaluate.classifier == dataclasses.replace(defaults, steps=50)
    assert loaded.filter.judge == dataclasses.replace(load_params(None).filter.judge, lr=0.01)


def test_params_are_frozen_and_dump_round_trips(tmp_path):
    params = load_params(None, ["plan.target=5"])
    with pytest.raises(Exception, match="frozen"):
        params.plan.target = 6
    f = tmp_path / "resolved.yaml"
    f.write_text(dump_params(params))
    assert load_params(f) == params


def test_missing_explicit_params_file_is_an_error(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_a_schedule_that_is_not_cron_is_refused_by_name():
    with pytest.raises(ParamsError, match=r"publish\.schedule: .*schedule 'every day' is not a cron expression"):
        load_params(None, ["publish.schedule=every day"])
    with pytest.raises(ParamsError, match=r"schedule '61 \* \* \* \*' is not a cron expression \(Bad minute\)"):
        load_params(None, ["publish.schedule=61 * * * *"])
    assert load_params(None, ["publish.schedule=30 2 * * 1"]).publish.schedule == "30 2 * * 1"
    assert load_params(None, ["publish.schedule=@daily"]).publish.schedule == "@daily"  # Prefect takes it too


def test_the_utility_gate_takes_a_rule_and_names_the_allowed_values():
    for value, rule in (("harm", "harm"), ("gain", "gain"), ("true", "harm"), ("false", False)):
        assert load_params(None, [f"publish.utility_gate={value}"]).publish.utility_gate == rule, value
    for bad in ("gian", "1", "[harm]", "null"):
        with pytest.raises(ParamsError, match=r"publish\.utility_gate: .*must be one of: harm, gain, false \(true "
                                              r"means harm\)"):
            load_params(None, [f"publish.utility_gate={bad}"])


def test_logistic_regression_is_a_third_family_once():
    assert load_params(None, []).evaluate.independent_families == ("extra_trees", "logistic_regression")
    only = load_params(None, ["evaluate.independent=logistic_regression"]).evaluate
    assert only.independent_families == ("logistic_regression",)
    assert load_params(None, ["evaluate.linear=false"]).evaluate.independent_families == ("extra_trees",)
