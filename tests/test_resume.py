"""Resume policy: every setting classified in one table; refused changes fail naming the field, both
values and the way out; changeable ones warn; flags not given on --resume keep the recorded values."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from dreamdist.artifact import load_artifact
from dreamdist.cli import build_parser, given_fields, main
from dreamdist.config import TrainConfig
from dreamdist.methods import get_method, method_names
from dreamdist.methods.dreamdistribution import DreamDistribution, DreamDistributionConfig
from dreamdist.training.loop import train
from dreamdist.training.resume import (
    CHANGE,
    INVOCATION,
    POLICY,
    REFUSE,
    check_changes,
    check_settings,
    inherit,
    recorded_configs,
    setting_changes,
)

SMALL = DreamDistributionConfig(num_prompts=2, num_tokens=1, num_samples=2)

# a valid instance of every config (required fields filled), the "recorded" side of the comparisons
REQUIRED = {"images": "refs", "out": "run", "class_noun": "dog", "init_word": "toy"}


def config_classes() -> list[type]:
    return [TrainConfig] + [get_method(name).config for name in method_names()]


def instance(cls: type):
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
    return cls(**{name: REQUIRED[name] for name in required})


def rows(kind: str) -> list[tuple[str, str]]:
    return [(section, name) for section, table in POLICY.items() for name, (k, _) in table.items() if k == kind]


def other(value):
    """A different value of the same kind (the comparison works on recorded dicts: no validation)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "-changed"
    return 7 if value is None else value + value


def changed(section: str, name: str) -> tuple[dict, dict]:
    cls = next(c for c in config_classes() if c.__name__ == section)
    recorded = dataclasses.asdict(instance(cls))
    return recorded, {**recorded, name: other(recorded[name])}


def test_every_field_of_every_config_is_classified_and_no_row_is_stale():
    for cls in config_classes():
        table = POLICY.get(cls.__name__)
        assert table is not None, f"{cls.__name__} has no section in dreamdist.training.resume.POLICY"
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(table)
        assert not missing, f"classify {sorted(missing)} of {cls.__name__} in dreamdist.training.resume.POLICY"
        assert set(table) <= names, f"stale rows {sorted(set(table) - names)} in POLICY[{cls.__name__!r}]"
        for name, (kind, why) in table.items():
            assert kind in (CHANGE, REFUSE, INVOCATION) and why, (cls.__name__, name)
    assert set(POLICY) == {cls.__name__ for cls in config_classes()}


def test_the_readme_promise_is_what_the_table_says():
    train = POLICY["TrainConfig"]
    for name in ("learning_rate", "lr_scheduler", "lr_warmup_steps", "max_grad_norm", "steps", "sample_every"):
        assert train[name][0] == CHANGE, name
    for name in ("batch_size", "seed", "min_timestep", "max_timestep", "flip", "resolution", "model", "method"):
        assert train[name][0] == REFUSE, name


@pytest.mark.parametrize(("section", "name"), rows(REFUSE))
def test_a_refused_change_names_the_field_both_values_and_the_way_out(section, name):
    recorded, new = changed(section, name)
    changes = setting_changes(section, recorded, new)
    assert [c.name for c in changes] == [name]
    with pytest.raises(ValueError) as info:
        check_changes(changes, "runs/x", step=2)
    message = str(info.value)
    flag = "--" + name.replace("_", "-")
    assert f"{flag}: recorded {recorded[name]!r}, now {new[name]!r}" in message
    assert "cannot resume runs/x" in message and "start a new run with another --out" in message


@pytest.mark.parametrize(("section", "name"), rows(CHANGE))
def test_a_changeable_setting_warns_once_and_is_taken(section, name, caplog):
    recorded, new = changed(section, name)
    changes = setting_changes(section, recorded, new)
    assert [(c.name, c.new) for c in changes] == [(name, new[name])]
    with caplog.at_level(logging.WARNING, logger="dreamdist"):
        check_changes(changes, "runs/x", step=2)
    flag = "--" + name.replace("_", "-")
    assert [r.getMessage() for r in caplog.records] == [
        f"--resume: {flag} changed from {recorded[name]!r} to {new[name]!r}; the new value applies from step 2"
    ]


@pytest.mark.parametrize(("section", "name"), rows(INVOCATION))
def test_invocation_settings_are_neither_compared_nor_inherited(section, name):
    recorded, new = changed(section, name)
    assert setting_changes(section, recorded, new) == []
    assert inherit(section, recorded, new, given=set())[name] == new[name]


def test_all_refused_changes_are_listed_in_one_error():
    recorded = dataclasses.asdict(instance(TrainConfig))
    new = {**recorded, "batch_size": 8, "seed": 3, "flip": True, "learning_rate": 0.1}
    with pytest.raises(ValueError) as info:
        check_changes(setting_changes("TrainConfig", recorded, new), "runs/x", step=2)
    text = str(info.value)
    assert "--batch-size" in text and "--seed" in text and "--flip" in text and "--learning-rate" not in text


def test_none_and_the_default_it_stands_for_are_the_same_setting():
    method = DreamDistribution(SMALL)
    base = TrainConfig(images="refs", out="run")
    meta = {
        "step": 2,
        "method": method.name,
        "train_config": dataclasses.asdict(base),
        "method_config": dataclasses.asdict(SMALL),
    }
    same = dataclasses.replace(base, batch_size=method.default_batch_size, min_timestep=method.default_timesteps[0])
    assert check_settings(meta, same, SMALL, method, "runs/x") == []
    default = method.default_batch_size
    with pytest.raises(ValueError, match=rf"--batch-size: recorded None \(the method's default, {default}\), now 3"):
        check_settings(meta, dataclasses.replace(base, batch_size=3), SMALL, method, "runs/x")
    with pytest.raises(ValueError, match="--num-prompts: recorded 2, now 3"):
        check_settings(meta, base, dataclasses.replace(SMALL, num_prompts=3), method, "runs/x")
    with pytest.raises(ValueError, match="already trained further"):
        check_settings(meta, dataclasses.replace(base, steps=1), SMALL, method, "runs/x")
    with pytest.raises(ValueError, match="--method: recorded 'textual-inversion', now 'dreamdistribution'"):
        check_settings({**meta, "method": "textual-inversion"}, base, SMALL, method, "runs/x")


def test_flags_not_given_take_the_recorded_values():
    recorded = {**dataclasses.asdict(instance(TrainConfig)), "sample_every": 15, "batch_size": 2, "progress": False}
    values = {**dataclasses.asdict(instance(TrainConfig)), "sample_every": 0, "steps": 9}
    merged = inherit("TrainConfig", recorded, values, given={"steps"})
    assert merged["sample_every"] == 15 and merged["batch_size"] == 2 and merged["steps"] == 9
    assert merged["progress"] is True  # this terminal's, not the record's
    given_at_default = inherit("TrainConfig", recorded, values, given={"sample_every"})
    assert given_at_default["sample_every"] == 0  # given explicitly, even at its default value: a change


def test_the_cli_knows_which_flags_were_given():
    argv = ["train", "--images", "a", "--out", "b", "--sample-every", "0", "--no-flip", "--num-prompts", "3"]
    assert given_fields(build_parser().parse_args(argv)) == {"images", "out", "sample_every", "flip", "num_prompts"}
    argv = ["train", "--method", "dreambooth", "--images", "a", "--out", "b", "--class-noun", "dog", "--no-prior"]
    assert given_fields(build_parser("dreambooth").parse_args(argv)) >= {"method", "prior_preservation"}
    with pytest.raises(SystemExit):  # --images and --out are required for a new run
        build_parser().parse_args(["train", "--out", "b"])
    assert given_fields(build_parser(resuming=True).parse_args(["train", "--out", "b", "--resume"])) == {
        "out",
        "resume",
    }


def cli(refs, model, out, *extra) -> list[str]:
    return [
        "train", "--images", str(refs), "--model", str(model), "--out", str(out), "--steps", "2",
        "--batch-size", "1", "--num-prompts", "2", "--num-tokens", "1", "--num-samples", "2",
        "--checkpoint-every", "1", "--sample-every", "1", "--seed", "3", "--no-progress", *extra,
    ]  # fmt: skip


def test_cli_resume_refuses_keeps_and_warns(refs, tiny_model, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    assert main(cli(refs, tiny_model, out)) == 0
    capsys.readouterr()
    # a refused change fails before anything loads, naming the flag, both values and the way out
    assert main(["train", "--out", str(out), "--resume", "--steps", "3", "--batch-size", "2"]) == 2
    err = capsys.readouterr().err
    assert "--batch-size: recorded 1, now 2" in err and "another --out" in err
    # flags not repeated keep the recorded values: K=2 prompts, seed 3, a grid every step, batch 1
    with caplog.at_level(logging.WARNING, logger="dreamdist"):
        assert main(["train", "--out", str(out), "--resume", "--steps", "3"]) == 0
    assert "sample" not in caplog.text and "num-prompts" not in caplog.text
    art = load_artifact(out)
    assert art.tensors["vectors"].shape[1] == 2 and art.meta["step"] == 3
    assert art.meta["train"]["sample_every"] == 1 and art.meta["train"]["seed"] == 3
    assert art.meta["train"]["batch_size"] == 1 and art.meta["train"]["images"] == str(refs)
    assert (out / "samples" / "step-0000003.png").is_file()
    # a changeable one (the learning rate) applies, with one warning, and is recorded with its step
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dreamdist"):
        assert main(["train", "--out", str(out), "--resume", "--steps", "4", "--learning-rate", "0.01"]) == 0
    lr = DreamDistribution.default_learning_rate
    assert (
        f"--learning-rate changed from None (the method's default, {lr}) to 0.01; the new value applies from step 3"
        in (caplog.text)
    )
    assert "--steps changed from 3 to 4" in caplog.text
    art = load_artifact(out)
    assert art.meta["train"]["learning_rate"] == 0.01 and art.meta["step"] == 4
    assert art.meta["resumes"][-1] == {"step": 3, "changed": {"steps": [3, 4], "learning_rate": [None, 0.01]}}


def test_cli_resume_takes_the_recorded_method_and_its_settings(refs, tiny_model, tmp_path):
    out = tmp_path / "ti"
    first = ["train", "--images", str(refs), "--model", str(tiny_model), "--out", str(out), "--steps", "2"]
    options = ["--batch-size", "1", "--method", "textual-inversion", "--init-word", "toy", "--token", "<x>"]
    assert main([*first, *options, "--checkpoint-every", "1", "--no-progress"]) == 0
    assert main(["train", "--out", str(out), "--resume", "--steps", "3"]) == 0
    art = load_artifact(out)
    assert art.method == "textual-inversion" and art.meta["step"] == 3
    assert art.meta["method_config"]["token"] == "<x>" and art.meta["method_config"]["init_word"] == "toy"


def test_api_resume_compares_every_field_and_rebuilds_the_recorded_configs(refs, tiny_model, tmp_path):
    out = tmp_path / "run"
    base = TrainConfig(
        images=str(refs), model=str(tiny_model), out=str(out), steps=2, batch_size=1, checkpoint_every=1, progress=False
    )
    train(base, SMALL)
    with pytest.raises(ValueError, match="--flip: recorded False, now True"):
        train(dataclasses.replace(base, flip=True, resume=True), SMALL)
    config, method_config = recorded_configs(out)
    assert config.batch_size == 1 and config.resume and method_config == SMALL
    train(dataclasses.replace(config, steps=3), None)  # None: the recorded method settings
    assert load_artifact(out).meta["step"] == 3
