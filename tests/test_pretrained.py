"""``create_model(name, pretrained=True)`` and ``eval --pretrained``: the manifest, the sha256 check, and a
``url`` fetched once into the cache (a ``file://`` URL here; nothing is downloaded in tests). The manifest is a
temporary one; the weights shipped in the package have their own test per file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import lightnets
import lightnets.models.pretrained as pretrained
from lightnets.cli import main
from lightnets.deploy.safetensors import export_safetensors
from lightnets.models.pretrained import sha256_of

from .conftest import shared_file

MODEL = "asymmnet_small_x0_35_cifar"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture
def shipped(tmp_path, monkeypatch) -> tuple[Path, torch.nn.Module]:
    """A weights folder with one safetensors export and a manifest entry for it, in place of the package's."""
    folder = tmp_path / "weights"
    folder.mkdir()
    model = lightnets.create_model(MODEL)
    path = export_safetensors(model, folder / f"{MODEL}.cifar10.safetensors", model_name=MODEL, model_kwargs={},
                              classes=CLASSES, extra={"mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616],
                                                      "input_size": 32, "eval_resize": 32})  # fmt: skip
    entry = {"file": path.name, "sha256": sha256_of(path), "dataset": "CIFAR-10", "top1": 12.34, "epochs": 1,
             "recipe": "lightnets train defaults", "hardware": "a test"}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps({MODEL: entry}))
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", folder)
    pretrained._manifest.cache_clear()
    monkeypatch.setenv("LIGHTNETS_CACHE", str(tmp_path / "cache"))
    yield path, model
    pretrained._manifest.cache_clear()


def test_pretrained_loads_the_shipped_weights_and_describes_them(shipped) -> None:
    path, source = shipped
    model = lightnets.create_model(MODEL, pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))
    cfg = model.pretrained_cfg
    assert (cfg["dataset"], cfg["top1"], cfg["epochs"], cfg["sha256"]) == ("CIFAR-10", 12.34, 1, sha256_of(path))
    assert cfg["mean"] == (0.4914, 0.4822, 0.4465) and model.classes == CLASSES
    head = lightnets.create_model(MODEL, pretrained=True, num_classes=3)  # fine-tuning start: a new classifier
    assert head.classifier.out_features == 3 and "new classifier" in head.pretrained_cfg["head"]


def test_a_file_whose_sha256_differs_is_refused(shipped) -> None:
    path, _ = shipped
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(
        ValueError, match=r"have sha256 .* not the .* their pretrained_cfg records: the file is damaged"
    ):
        lightnets.create_model(MODEL, pretrained=True)


def test_a_url_is_fetched_once_into_the_cache_and_checked(shipped, tmp_path) -> None:
    path, source = shipped
    published = tmp_path / "published"
    published.mkdir()
    shutil.copy(path, published / path.name)
    shutil.copy(path.with_suffix(".json"), published / path.with_suffix(".json").name)
    manifest = pretrained.WEIGHTS_DIR / "manifest.json"
    entry = json.loads(manifest.read_text())[MODEL]
    entry.pop("file")
    entry["url"] = (published / path.name).as_uri()
    manifest.write_text(json.dumps({MODEL: entry}))
    pretrained._manifest.cache_clear()
    model = lightnets.create_model(MODEL, pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))
    cached = list((tmp_path / "cache" / "weights").iterdir())
    assert sorted(p.suffix for p in cached) == [".json", ".safetensors"]
    good = entry["sha256"]
    entry["sha256"] = "0" * 64  # the published file is not the one the manifest names
    manifest.write_text(json.dumps({MODEL: entry}))
    pretrained._manifest.cache_clear()
    with pytest.raises(ValueError, match="the file is damaged or another one"):
        lightnets.create_model(MODEL, pretrained=True)
    assert sorted(p.name for p in (tmp_path / "cache" / "weights").iterdir()) == sorted(p.name for p in cached)
    entry["sha256"] = good
    manifest.write_text(json.dumps({MODEL: entry}))
    pretrained._manifest.cache_clear()
    shutil.rmtree(published)  # from now on only the cache has it
    assert lightnets.create_model(MODEL, pretrained=True).classes == CLASSES


def test_a_model_without_weights_names_those_that_have_them(shipped) -> None:
    with pytest.raises(ValueError, match=rf"spgnet_s2p6 has no pretrained weights .*models with weights: {MODEL}"):
        lightnets.create_model("spgnet_s2p6", pretrained=True)


def test_the_commands_list_and_evaluate_them(shipped, capsys) -> None:
    assert main(["models", "--pretrained"]) == 0
    out = capsys.readouterr().out
    assert MODEL in out and "CIFAR-10" in out and "12.34%" in out
    data = f"cifar10:{shared_file('cifar-10-subset-python.tar.gz')}"
    assert main(["eval", "--model", MODEL, "--pretrained", "--data", data, "--workers", "0"]) == 0
    assert "top-1" in capsys.readouterr().out
    assert main(["eval", "--model", MODEL, "--pretrained", "--checkpoint", "x.pt", "--data", data]) == 2
    assert "pass --model, not --checkpoint" in capsys.readouterr().err


SHIPPED = pretrained.list_pretrained()


@pytest.mark.slow  # the full 10,000-image test split per weight
@pytest.mark.parametrize(
    "name", SHIPPED or [pytest.param(None, marks=pytest.mark.skip(reason="no weights are shipped in this version"))]
)
def test_each_shipped_weight_gives_its_recorded_top1_on_the_cifar10_test_split(name) -> None:
    from lightnets.evaluation import evaluate_checkpoint

    cfg = pretrained.pretrained_cfg(name)
    path = pretrained.pretrained_path(name)  # the sha256 check
    assert path.stat().st_size <= 20 * 2**20, f"{path} is over 20 MB"
    data = f"cifar10:{shared_file('cifar-10-jpeg-python.tar.gz')}"
    report = evaluate_checkpoint(path, data, model_name=name, workers=0, device="cpu")
    assert report["images"] == 10_000
    assert report["top1"] == pytest.approx(cfg["top1"], abs=0.05)
