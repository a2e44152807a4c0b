"""One output policy (``dreamdist.outputs``) for every command that writes a folder, and input refused at the door."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dreamdist import outputs
from dreamdist.cli import main, normalise_weights
from dreamdist.config import TrainConfig
from dreamdist.methods.dreamdistribution import DreamDistributionConfig
from dreamdist.outputs import NEW, REPLACED, RESUME, check_output
from dreamdist.testing import write_images

SPEC = outputs.OutputSpec(
    "dreamdist thing", owns=("record.json", "[0-9]*.png"), records=("record.json",), results=("[0-9]*.png",)
)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def put(folder: Path, *names: str) -> Path:
    """Files with their own name as content."""
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(name)
    return folder


# ---------------------------------------------------------------- the policy
def test_a_missing_empty_or_litter_only_folder_is_new(tmp_path):
    assert check_output(tmp_path / "missing", SPEC) == NEW
    assert check_output(put(tmp_path / "litter", ".DS_Store"), SPEC) == NEW


def test_leftovers_without_results_do_not_block_a_rerun(tmp_path):
    folder = put(tmp_path / "out", "record.json", ".00001.png.tmp-12-ab")  # a run that failed before its first image
    assert check_output(folder, SPEC) == NEW
    assert (folder / "record.json").exists()  # the caller replaces its own leftovers


def test_results_are_refused_naming_overwrite_and_kept(tmp_path):
    folder = put(tmp_path / "out", "record.json", "00000.png", "00001.png")
    before = files(folder)
    with pytest.raises(FileExistsError, match="pass --overwrite to replace it") as info:
        check_output(folder, SPEC, reason="made with other settings", resume_hint="rerun it, or ")
    assert "\n" not in str(info.value) and "00000.png" in str(info.value) and "other settings" in str(info.value)
    assert files(folder) == before


def test_resumable_results_are_continued_even_with_overwrite(tmp_path):
    folder = put(tmp_path / "out", "record.json", "00000.png")
    assert check_output(folder, SPEC, resumable=True) == RESUME
    assert check_output(folder, SPEC, overwrite=True, resumable=True) == RESUME
    assert (folder / "00000.png").exists()


def test_overwrite_removes_only_what_the_command_writes(tmp_path, capsys):
    folder = put(tmp_path / "out", "record.json", "00000.png", "notes.txt", "mine/a.png")
    assert check_output(folder, SPEC, overwrite=True) == REPLACED
    assert files(folder) == {"notes.txt": b"notes.txt", "mine/a.png": b"mine/a.png"}
    err = capsys.readouterr().err
    assert "removed" in err and "kept mine, notes.txt" in err


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_of_other_files_is_refused_whatever_the_flags(tmp_path, overwrite):
    folder = put(tmp_path / "out", "photo.jpg", "00000.png")
    with pytest.raises(FileExistsError, match="did not write \\(photo.jpg\\); choose an empty or new --out"):
        check_output(folder, SPEC, overwrite=overwrite)
    assert files(folder) == {"photo.jpg": b"photo.jpg", "00000.png": b"00000.png"}


def test_generic_names_count_as_the_commands_only_with_its_record(tmp_path):
    folder = put(tmp_path / "out", "run/notes.txt", "references/a.png")  # a user's folder, demo-like names
    with pytest.raises(FileExistsError, match="did not write"):
        check_output(folder, outputs.DEMO)
    put(folder, ".demo.json")  # what an unfinished demo leaves
    assert check_output(folder, outputs.DEMO) == NEW


def test_a_file_is_not_an_output_folder(tmp_path):
    with pytest.raises(NotADirectoryError, match="--out .* is a file"):
        check_output(put(tmp_path, "f.txt") / "f.txt", SPEC)


def test_the_specs_name_what_the_commands_write():
    from dreamdist.artifact import ARTIFACT_NAME
    from dreamdist.classify.outputs import CONFUSION_FILE, MODEL_FILE, REPORT_FILE
    from dreamdist.evaluation.report import REPORT_JSON
    from dreamdist.generation import MANIFEST, REQUEST
    from dreamdist.methods.prior import CLASS_DIR
    from dreamdist.runlock import LOCK_NAME
    from dreamdist.synth import store
    from dreamdist.toyworld.concepts import MANIFEST as TOY_MANIFEST

    assert {ARTIFACT_NAME, CLASS_DIR, LOCK_NAME} <= set(outputs.TRAIN.owns)
    assert {MANIFEST, REQUEST} <= set(outputs.GENERATE.owns)
    assert {store.REQUEST, store.MANIFEST, store.WORK, store.TRASH} <= set(outputs.SYNTH.owns)
    assert REPORT_JSON in outputs.EVAL.owns and TOY_MANIFEST in outputs.TOY_REFS.owns
    assert {MODEL_FILE, REPORT_FILE, CONFUSION_FILE} == set(outputs.CLASSIFY.owns)


# ---------------------------------------------------------------- every command
@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    """A tiny trained DreamDistribution run."""
    from dreamdist.training.loop import train

    root = tmp_path_factory.mktemp("outputs_run")
    config = TrainConfig(
        images=str(write_images(root / "refs", 3)),
        out=str(root / "run"),
        model=str(tiny_model),
        steps=1,
        progress=False,
    )
    return train(config, DreamDistributionConfig(num_prompts=2, num_tokens=1, num_samples=1))


def _generate(run, tiny_model, out, *extra):
    return ["generate", str(run), "--out", str(out), "--num-inference-steps", "1", "--no-progress", *extra]


EARLIER = {  # command -> the files of an earlier output of it
    "train": ("train_config.json", "checkpoints/step-0000002/state.safetensors", "dreamdist.safetensors"),
    "generate": ("request.json", "manifest.jsonl", "00000.png", "00001.png"),
    "synth": ("synth.json", "manifest.jsonl", "cat/000000.png"),
    "eval": ("report.json", "report.md", "metrics.png"),
    "classify": ("classifier.safetensors", "report.json", "confusion.png"),
    "demo": ("report.json", "demo.png", "run/dreamdist.safetensors"),
    "toy-refs": (".toyworld.json", "red-circles_000.png"),
}


def command_line(command: str, run: Path, model: Path, out: Path) -> list[str]:
    """A small command line of ``command`` writing into ``out``."""
    refs, fast = str(run.parent / "refs"), ["--num-inference-steps", "1", "--no-progress"]
    argv = {
        "train": ["train", "--images", refs, "--model", str(model), "--steps", "1", "--no-progress"],
        "generate": ["generate", str(run), "--num-images", "1", *fast],
        "synth": ["synth", "--run", f"cat={run}", "--per-class", "1", "--filter", "none", *fast],
        "eval": ["eval", "--real", refs, "--generated", refs, "--offline"],
        "classify": ["classify", "--train", str(run.parent), "--test", str(run.parent)],
        "demo": ["demo"],
        "toy-refs": ["toy-refs", "cool-patterned"],
    }[command]
    return [*argv, "--out", str(out)]


@pytest.mark.parametrize("command", sorted(EARLIER))
def test_every_command_refuses_to_replace_its_earlier_output_silently(command, run, tiny_model, tmp_path, capsys):
    put(tmp_path / "out", *EARLIER[command])
    if command == "synth":  # a dataset of other settings: its record is what synth compares
        (tmp_path / "out" / "synth.json").write_text(json.dumps({"classes": [{"folder": "cat"}], "seed": 99}))
    before = files(tmp_path / "out")
    assert main(command_line(command, run, tiny_model, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds output of" in err and "--overwrite" in err and len(err.splitlines()) == 1, err
    assert files(tmp_path / "out") == before


@pytest.mark.parametrize("command", sorted(EARLIER))
def test_every_command_refuses_a_folder_of_other_files(command, run, tiny_model, tmp_path, capsys):
    put(tmp_path / "out", "holiday.jpg")
    assert main([*command_line(command, run, tiny_model, tmp_path / "out"), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert "did not write (holiday.jpg)" in err and len(err.splitlines()) == 1, err
    assert files(tmp_path / "out") == {"holiday.jpg": b"holiday.jpg"}


def test_generate_keeps_a_larger_earlier_request_unless_overwrite(run, tiny_model, tmp_path, capsys):
    out = tmp_path / "g15"
    assert main(_generate(run, tiny_model, out, "--num-images", "3")) == 0
    before = files(out)
    assert main(_generate(run, tiny_model, out, "--num-images", "2")) == 2  # the user's report: 8 images then 2
    assert "an earlier request for 3 images" in capsys.readouterr().err and files(out) == before
    assert main(_generate(run, tiny_model, out, "--num-images", "2", "--gamma", "2")) == 2
    assert "--gamma" in capsys.readouterr().err and files(out) == before
    assert main(_generate(run, tiny_model, out, "--num-images", "4")) == 0  # the same request continues
    assert "3 of them were already in" in capsys.readouterr().out
    assert main(_generate(run, tiny_model, out, "--num-images", "2", "--overwrite")) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00001.png", "grid.png"]


def test_a_failed_generate_does_not_block_its_corrected_rerun(run, tiny_model, tmp_path, monkeypatch):
    import dreamdist.generation as generation

    def broken(*args, **kwargs):
        raise OSError("the model ran out of memory")  # fails before its first image

    with monkeypatch.context() as patch:
        patch.setattr(generation, "stream_images", broken)
        assert main(_generate(run, tiny_model, tmp_path / "g", "--num-images", "2")) == 2
    assert (tmp_path / "g" / "request.json").exists()
    assert main(_generate(run, tiny_model, tmp_path / "g", "--num-images", "2", "--gamma", "0.5")) == 0


def test_a_synth_that_failed_before_its_first_image_does_not_block_the_corrected_one(run, tmp_path, capsys):
    argv = [
        "synth",
        "--run",
        f"cat={run}",
        "--per-class",
        "1",
        "--out",
        str(tmp_path / "ds"),
        "--num-inference-steps",
        "1",
        "--no-progress",
    ]
    assert main([*argv, "--clip-model", str(tmp_path / "no-clip-here")]) == 2  # CLIP is not available
    assert (tmp_path / "ds" / "synth.json").exists()
    capsys.readouterr()
    assert main([*argv, "--filter", "none"]) == 0, capsys.readouterr().err
    assert (tmp_path / "ds" / "cat" / "000000.png").exists()
    assert json.loads((tmp_path / "ds" / "synth.json").read_text())["filter"] == "none"


def test_synth_overwrite_replaces_a_dataset_of_other_settings(run, tmp_path, capsys):
    argv = [
        "synth",
        "--run",
        f"cat={run}",
        "--per-class",
        "1",
        "--filter",
        "none",
        "--out",
        str(tmp_path / "ds"),
        "--num-inference-steps",
        "1",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert main([*argv, "--seed", "5"]) == 2
    assert "rerun with the original settings to continue it, or pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--seed", "5", "--overwrite"]) == 0
    assert json.loads((tmp_path / "ds" / "synth.json").read_text())["seed"] == 5


def test_train_resume_or_overwrite(run, tiny_model, tmp_path, capsys):
    argv = [
        "train",
        "--images",
        str(run.parent / "refs"),
        "--model",
        str(tiny_model),
        "--out",
        str(tmp_path / "r"),
        "--num-prompts",
        "2",
        "--num-tokens",
        "1",
        "--num-samples",
        "1",
        "--no-progress",
    ]
    assert main([*argv, "--steps", "2"]) == 0
    assert main([*argv, "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "pass --resume to continue it, pass --overwrite to replace it" in err
    assert main([*argv, "--steps", "3", "--resume", "--overwrite"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main([*argv, "--steps", "1", "--overwrite"]) == 0
    assert [p.name for p in (tmp_path / "r" / "checkpoints").iterdir()] == ["step-0000001"]
    assert "--out" in capsys.readouterr().out  # the next-step hint


def test_toy_refs_size_is_refused_at_the_door_and_overwrite_replaces(tmp_path, capsys):
    assert main(["toy-refs", "cool-patterned", "--out", str(tmp_path / "r"), "--size", "32"]) == 2
    assert "--size must be >= 64" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert main(["toy-refs", "cool-patterned", "--out", str(tmp_path / "r"), "--n", "2"]) == 0
    assert main(["toy-refs", "cool-patterned", "--out", str(tmp_path / "r"), "--n", "1"]) == 2
    assert main(["toy-refs", "cool-patterned", "--out", str(tmp_path / "r"), "--n", "1", "--overwrite"]) == 0
    assert len(list((tmp_path / "r").glob("*.png"))) == 1


# ---------------------------------------------------------------- validation at the door
@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--num-images", "0"], "--num-images"),
        (["--gamma", "-1"], "--gamma"),
        (["--gamma", "nan"], "--gamma"),
        (["--guidance-scale", "-1"], "--guidance-scale"),
        (["--num-inference-steps", "0"], "--num-inference-steps"),
        (["--height", "30"], "--height"),
        (["--width", "0"], "--width"),
    ],
)
def test_generate_refuses_bad_values_before_loading_anything(extra, flag, tmp_path, capsys):
    argv = ["generate", str(tmp_path / "no-run"), "--out", str(tmp_path / "g"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert flag in err and "no-run" not in err, err  # refused before the (missing) artifact is even opened


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--resolution", "30"], "--resolution"),
        (["--resolution", "0"], "--resolution"),
        (["--learning-rate", "0"], "--learning-rate"),
        (["--max-grad-norm", "nan"], "--max-grad-norm"),
        (["--steps", "0"], "--steps"),
    ],
)
def test_train_refuses_bad_values_before_loading_anything(extra, flag, tmp_path, capsys):
    argv = ["train", "--images", str(tmp_path / "no-images"), "--out", str(tmp_path / "r"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert flag in err and "no-images" not in err, err


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["classify", "--train", "a", "--test", "b", "--lr", "nan"], "--lr"),
        (["toy-refs", "cool-patterned", "--n", "0"], "--n"),
        (["toy-refs", "cool-patterned", "--size", "63"], "--size"),
    ],
)
def test_other_commands_refuse_bad_values_naming_the_flag(argv, flag, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert flag in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_the_gamma_message_says_what_gamma_does_for_each_sampler(tmp_path, capsys):
    assert main(["generate", "x", "--out", str(tmp_path / "g"), "--gamma", "-0.5"]) == 2
    err = capsys.readouterr().err
    assert "gaussian gives the mean prompt" in err and "mixture the K learned prompts" in err


def test_mix_weights_are_normalised_with_a_note(run, tiny_model, tmp_path, capsys):
    argv = [
        "generate",
        "--mix",
        f"{run}:3",
        f"{run}:1",
        "--num-images",
        "1",
        "--num-inference-steps",
        "1",
        "--out",
        str(tmp_path / "m"),
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "normalised to 0.75, 0.25" in capsys.readouterr().err
    assert json.loads((tmp_path / "m" / "manifest.jsonl").read_text())["weights"] == [0.75, 0.25]
    assert main([*argv[:2], f"{run}:-1", f"{run}:1", *argv[4:]]) == 2
    assert "must be a number >= 0" in capsys.readouterr().err
    assert main([*argv[:2], f"{run}:0", f"{run}:0", *argv[4:]]) == 2
    assert "all 0" in capsys.readouterr().err


def test_normalise_weights():
    assert normalise_weights([1, 1, 2]) == [0.25, 0.25, 0.5]
    assert math.isclose(sum(normalise_weights([0.3, 0.7])), 1.0)


def test_prompt_set_says_how_many_images_it_makes(run, tiny_model, tmp_path, capsys):
    from dreamdist.prompts import prompt_set

    prompts = len(prompt_set("dreambooth"))
    argv = _generate(run, tiny_model, tmp_path / "p", "--prompt-set", "dreambooth", "--num-images", "1")
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"{prompts} prompts x 1 images = {prompts} images" in captured.err + captured.out
    assert len(list((tmp_path / "p").glob("0*.png"))) == prompts
