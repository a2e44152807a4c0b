"""Offline is found out in about a second: no minute of huggingface_hub retries, a message that says what to do."""

from __future__ import annotations

import socket
import time

import pytest
from PIL import Image

from dreamdist.evaluation import features, hub
from dreamdist.evaluation.cli import main

MISSING = "dreamdist-test/no-such-dinov2"  # an id no cache holds


@pytest.fixture
def closed_port():
    """A local port nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def no_network(monkeypatch, tmp_path, closed_port):
    """An empty HF cache and a hub endpoint that refuses connections."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tiny_pngs(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (32, 32), (30 * i, 0, 0)).save(folder / f"{i}.png")
    return folder


def eval_args(folder, out, *extra):
    return ["eval", "--real", str(folder), "--generated", str(folder), "--out", str(out), "--no-progress", *extra]


def test_missing_model_without_network_fails_at_once_with_the_fix(no_network, tiny_pngs, tmp_path, capsys):
    start = time.monotonic()
    code = main(eval_args(tiny_pngs, tmp_path / "out", "--metrics", "coverage,dino", "--dinov2-model", MISSING))
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2 and elapsed < 10, (elapsed, err)  # huggingface_hub's retries alone take ~25 s per file
    assert MISSING in err and "facebook/dino-vits16" in err  # every missing model, in one message
    assert "--dinov2-model DIR" in err and "--dino-model DIR" in err and f"hf download {MISSING}" in err
    assert "cannot be reached" in err and "--features toy-oracle" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", ["env", "flag"])
def test_offline_mode_skips_the_probe(no_network, tiny_pngs, tmp_path, monkeypatch, capsys, how):
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: pytest.fail("offline mode must not probe"))
    extra = ["--metrics", "coverage", "--dinov2-model", MISSING]
    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        extra.append("--offline")
    assert main(eval_args(tiny_pngs, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err
    assert (
        "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set" if how == "env" else "--offline was given"
    ) in err and MISSING in err


def test_extractors_try_the_cache_first_and_fail_fast(no_network):
    start = time.monotonic()
    with pytest.raises(hub.ModelUnavailableError, match=f"{MISSING}.*--dino-model DIR"):
        features.DINOFeatures(MISSING, device="cpu")
    assert time.monotonic() - start < 10
    with pytest.raises(features.FeatureModelError):  # still the error type callers catch
        features.CLIPFeatures(MISSING, device="cpu", local_files_only=True)


def test_cached_models_pass_without_touching_the_network(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: f"/hf/{repo}/snapshots/c/{name}")
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: pytest.fail("a cached model needs no probe"))
    hub.require_available([hub.ModelNeed("DINO", "org/model", "--dino-model")])
    hub.require_available([hub.ModelNeed("DINO", "./a/local/folder", "--dino-model")], local_files_only=True)


def test_probe_connects_once_with_a_short_timeout(monkeypatch, closed_port):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub.hub_reachable()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    start = time.monotonic()
    assert not hub.hub_reachable()
    assert time.monotonic() - start < 2
    monkeypatch.setenv("HF_ENDPOINT", "https://huggingface.co")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert hub.probe_address() == ("proxy.example", 3128)  # downloads go through the proxy: probe it
