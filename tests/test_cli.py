"""The command line, in-process: the README's commands and clean failures."""

from __future__ import annotations

import json

import pytest

from dreamdist.cli import main, parse_mix


def test_train_generate_interpret_info(refs, tiny_model, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--images",
            str(refs),
            "--model",
            str(tiny_model),
            "--out",
            str(run),
            "--steps",
            "2",
            "--num-prompts",
            "4",
            "--num-tokens",
            "2",
            "--num-samples",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0 and (run / "dreamdist.safetensors").exists()
    code = main(
        [
            "generate",
            str(run),
            "--num-images",
            "2",
            "--num-inference-steps",
            "2",
            "--out",
            str(tmp_path / "g"),
            "--suffix",
            "at night",
            "--gamma",
            "1.5",
            "--no-progress",
        ]
    )
    assert code == 0
    record = json.loads((tmp_path / "g" / "manifest.jsonl").read_text().splitlines()[0])
    assert record["suffix"] == "at night" and record["gamma"] == 1.5
    code = main(
        [
            "generate",
            "--mix",
            f"{run}:0.5",
            f"{run}:0.5",
            "--num-images",
            "1",
            "--num-inference-steps",
            "1",
            "--out",
            str(tmp_path / "m"),
            "--no-progress",
        ]
    )
    assert code == 0
    capsys.readouterr()
    assert main(["interpret", str(run), "--top-k", "2", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert len(table["refs"]) == 2 and len(table["refs"][0]) == 2
    assert main(["info", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "dreamdistribution"


def test_user_errors_exit_2_with_one_line(tmp_path, tiny_model, capsys):
    (tmp_path / "empty").mkdir()
    code = main(
        ["train", "--images", str(tmp_path / "empty"), "--model", str(tiny_model), "--out", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no usable image" in err and "Traceback" not in err
    assert main(["train", "--images", "x", "--out", "y", "--method", "nope"]) == 2
    assert "unknown method" in capsys.readouterr().err
    (tmp_path / "a.pt").write_bytes(b"\x80\x04N.")
    assert main(["info", str(tmp_path / "a.pt")]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert main(["generate", "--mix", "a:0.5", "b:0.6", "--out", str(tmp_path / "o")]) == 2


def test_parse_mix():
    assert parse_mix(["runs/a:0.3", "C:/x/b:0.7"]) == (["runs/a", "C:/x/b"], [0.3, 0.7])


def test_interpret_textual_inversion_token(refs, tiny_model, tmp_path, capsys):
    run = tmp_path / "ti"
    code = main(
        [
            "train",
            "--method",
            "textual-inversion",
            "--images",
            str(refs),
            "--model",
            str(tiny_model),
            "--out",
            str(run),
            "--steps",
            "1",
            "--token",
            "<thing>",
            "--init-word",
            "cathedral",
            "--no-progress",
        ]
    )
    assert code == 0
    capsys.readouterr()
    assert main(["interpret", str(run), "--top-k", "1", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert list(table) == ["<thing>"]
    assert table["<thing>"][0][0][0] == "cathedral"  # one tiny step stays next to its init word


def test_generate_scheduler_choice(refs, tiny_model, tmp_path, capsys):
    args = [
        "generate",
        "--model",
        str(tiny_model),
        "--prompt",
        "a photo of a dog",
        "--num-images",
        "1",
        "--num-inference-steps",
        "2",
        "--no-progress",
    ]
    assert main([*args, "--scheduler", "euler-a", "--out", str(tmp_path / "e")]) == 0
    record = json.loads((tmp_path / "e" / "manifest.jsonl").read_text())
    assert record["scheduler"] == "EulerAncestralDiscreteScheduler"
    with pytest.raises(SystemExit) as exit_info:  # an argparse choice: the error lists the schedulers
        main([*args, "--scheduler", "nope", "--out", str(tmp_path / "n")])
    assert exit_info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_scheduler_choices_are_the_pipeline_table():
    from dreamdist.config import SCHEDULER_NAMES
    from dreamdist.pipeline import SCHEDULERS

    assert set(SCHEDULER_NAMES) == set(SCHEDULERS)
