"""Data loading: --data parsing, CIFAR archives and folders, the restricted unpickler, image folders, augmentation."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightnets.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataSpec,
    ImageFolderSplit,
    TensorSplit,
    UnsafePickleError,
    collate_skip_bad,
    eval_transform,
    load_dataset,
    load_image_rgb,
    parse_data_spec,
    random_crop_flip,
)
from lightnets.data import cifar as cifar_module

from .conftest import shared_file

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ----------------------------------------------------------------------------------------------- helpers


def _batch(count: int, seed: int, label_key: str, num_classes: int, str_keys: bool) -> dict:
    rng = np.random.default_rng(seed)
    record = {
        "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, num_classes, count)],
        "batch_label": "synthetic",
    }
    return record if str_keys else {k.encode(): v for k, v in record.items()}


def _write_cifar(
    target: Path, kind: str, *, per_batch: int = 6, str_keys: bool = False, protocol: int = 2, archive: bool = True
) -> Path:
    """A tiny CIFAR-10/100 in the official layout, as a .tar.gz or an extracted folder under ``target``."""
    info = cifar_module.CIFAR_SOURCES[kind]
    num_classes = 10 if kind == "cifar10" else 100
    names = [f"class{i}" for i in range(num_classes)]
    members = {info.meta_file: {info.names_key: names if str_keys else [n.encode() for n in names]}}
    if not str_keys:
        members = {name: {k.encode(): v for k, v in meta.items()} for name, meta in members.items()}
    for i, name in enumerate(info.train_files + info.test_files):
        members[name] = _batch(per_batch, i, info.label_key, num_classes, str_keys)
    blobs = {f"{info.folder}/{name}": pickle.dumps(obj, protocol=protocol) for name, obj in members.items()}
    if not archive:
        for name, blob in blobs.items():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(blob)
        return target / info.folder
    path = target / info.archive
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in blobs.items():
            member = tarfile.TarInfo(name)
            member.size = len(blob)
            tar.addfile(member, io.BytesIO(blob))
    return path


@pytest.fixture(scope="module")
def subset_archive() -> Path:
    return shared_file("cifar-10-subset-python.tar.gz")


@pytest.fixture(scope="module")
def subset_bundle(subset_archive: Path):
    return load_dataset(f"cifar10:{subset_archive}", download=False)


@pytest.fixture(scope="module")
def subset_folder(subset_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("cifar-subset")
    with tarfile.open(subset_archive) as tar:
        tar.extractall(target, filter="data")
    return target


# ----------------------------------------------------------------------------------------------- --data


@pytest.mark.parametrize(
    ("text", "kind", "path"),
    [
        ("cifar10", "cifar10", None),
        ("cifar100", "cifar100", None),
        ("CIFAR10", "cifar10", None),
        ("cifar10:/data/c10.tar.gz", "cifar10", Path("/data/c10.tar.gz")),
        ("cifar100:some/dir", "cifar100", Path("some/dir")),
        ("folder:/images/x:y", "folder", Path("/images/x:y")),
    ],
)
def test_parse_data_spec_valid(text: str, kind: str, path: Path | None) -> None:
    assert parse_data_spec(text) == DataSpec(kind, path)


@pytest.mark.parametrize("text", ["imagenet", "folder", "folder:", "cifar10:", "", "mnist:/x"])
def test_parse_data_spec_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="invalid --data value") as caught:
        parse_data_spec(text)
    message = str(caught.value)
    assert repr(text) in message and "\n" not in message
    for form in ("cifar10", "cifar100", "cifar10:PATH", "cifar100:PATH", "folder:PATH"):
        assert form in message


def test_constants_match_timm() -> None:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    assert IMAGENET_MEAN == IMAGENET_DEFAULT_MEAN and IMAGENET_STD == IMAGENET_DEFAULT_STD
    assert len(CIFAR_MEAN) == len(CIFAR_STD) == 3


# ----------------------------------------------------------------------------------------------- CIFAR


def test_cifar_subset_archive(subset_bundle) -> None:
    bundle = subset_bundle
    assert (bundle.kind, bundle.val_name, bundle.input_size, bundle.eval_resize) == ("cifar10", "test", 32, 32)
    assert bundle.classes == CIFAR10_CLASSES
    assert (bundle.mean, bundle.std) == (CIFAR_MEAN, CIFAR_STD)
    for split, count in ((bundle.train, 5085), (bundle.val, 1017)):
        assert isinstance(split, TensorSplit) and len(split) == count
        assert split.images.shape == (count, 3, 32, 32) and split.images.dtype == torch.uint8
        assert split.images.is_contiguous()
        assert split.labels.dtype == torch.int64
        assert split.labels.min() == 0 and split.labels.max() == 9
    # The exact original pixels have the published CIFAR-10 channel means to within sampling noise.
    means = bundle.train.images.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor(CIFAR_MEAN), atol=0.01)


@pytest.mark.parametrize("nested", [False, True])
def test_cifar_folder_equals_archive(subset_bundle, subset_folder: Path, nested: bool) -> None:
    path = subset_folder if nested else subset_folder / "cifar-10-batches-py"
    bundle = load_dataset(DataSpec("cifar10", path), download=False)
    assert bundle.classes == subset_bundle.classes
    for name in ("train", "val"):
        assert torch.equal(getattr(bundle, name).images, getattr(subset_bundle, name).images)
        assert torch.equal(getattr(bundle, name).labels, getattr(subset_bundle, name).labels)


def test_cifar_val_split_is_stratified_and_deterministic(subset_archive: Path) -> None:
    first = load_dataset(f"cifar10:{subset_archive}", val_split=0.1, seed=3, download=False)
    again = load_dataset(f"cifar10:{subset_archive}", val_split=0.1, seed=3, download=False)
    other = load_dataset(f"cifar10:{subset_archive}", val_split=0.1, seed=4, download=False)
    assert first.val_name == "val" and len(first.train) + len(first.val) == 5085
    assert torch.equal(first.val.images, again.val.images) and not torch.equal(first.val.images, other.val.images)
    train_counts, val_counts = first.train.labels.bincount(), first.val.labels.bincount()
    assert torch.equal(val_counts, ((train_counts + val_counts) * 0.1).round().long())


def test_cifar_full_jpeg_archive_counts() -> None:
    bundle = load_dataset(f"cifar10:{shared_file('cifar-10-jpeg-python.tar.gz')}", download=False)
    assert (len(bundle.train), len(bundle.val)) == (50000, 10000)
    assert bundle.val.labels.bincount().tolist() == [1000] * 10


@pytest.mark.parametrize(("str_keys", "protocol"), [(False, 2), (True, 2), (True, 5)])
def test_cifar100_from_data_root(tmp_path: Path, str_keys: bool, protocol: int) -> None:
    _write_cifar(tmp_path, "cifar100", str_keys=str_keys, protocol=protocol)
    bundle = load_dataset("cifar100", data_root=tmp_path, download=False)
    assert len(bundle.classes) == 100 and bundle.classes[7] == "class7"
    assert (len(bundle.train), len(bundle.val), bundle.val_name) == (6, 6, "test")
    assert bundle.mean != CIFAR_MEAN  # CIFAR-100 has its own statistics


def test_cifar_data_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_cifar(tmp_path, "cifar10", archive=False)
    monkeypatch.setenv("LIGHTNETS_DATA", str(tmp_path))
    bundle = load_dataset("cifar10", download=False)
    assert (len(bundle.train), len(bundle.val)) == (30, 6)


def test_cifar_offline_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        load_dataset("cifar100", data_root=tmp_path, download=False)
    message = str(caught.value)
    assert str(tmp_path / "cifar-100-python.tar.gz") in message
    assert str(tmp_path / "cifar-100-python") in message
    assert "--data cifar100:PATH" in message and "\n" not in message
    assert isinstance(caught.value, ValueError)


def test_cifar_failed_download_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(cifar_module.urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match="no route to host") as caught:
        load_dataset("cifar10", data_root=tmp_path)
    assert str(tmp_path / "cifar-10-python.tar.gz") in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # no half-written temp file left behind


def test_cifar_download_checks_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "server").mkdir()
    served = _write_cifar(tmp_path / "server", "cifar10")
    root = tmp_path / "root"
    monkeypatch.setattr(cifar_module.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(served.read_bytes()))
    with pytest.raises(ValueError, match="md5"):
        load_dataset("cifar10", data_root=root)
    assert list(root.iterdir()) == []

    info = cifar_module.CIFAR_SOURCES["cifar10"]
    patched = type(info)(**{**info.__dict__, "md5": hashlib.md5(served.read_bytes()).hexdigest()})
    monkeypatch.setitem(cifar_module.CIFAR_SOURCES, "cifar10", patched)
    bundle = load_dataset("cifar10", data_root=root)
    assert len(bundle.train) == 30 and [p.name for p in root.iterdir()] == ["cifar-10-python.tar.gz"]


def test_cifar_truncated_archive(subset_archive: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "cifar-10-python.tar.gz"
    truncated.write_bytes(subset_archive.read_bytes()[: 3 * 1024 * 1024])
    with pytest.raises(ValueError, match="truncated or corrupt") as caught:
        load_dataset(f"cifar10:{truncated}", download=False)
    assert str(truncated) in str(caught.value) and "\n" not in str(caught.value)


def test_cifar_incomplete_folder(tmp_path: Path) -> None:
    folder = _write_cifar(tmp_path, "cifar10", archive=False)
    (folder / "data_batch_3").unlink()
    with pytest.raises(ValueError, match="lacks data_batch_3") as caught:
        load_dataset(f"cifar10:{folder}", download=False)
    assert str(folder) in str(caught.value)


def test_cifar_wrong_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(f"cifar10:{tmp_path / 'nowhere'}")
    with pytest.raises(ValueError, match="holds no cifar10 data"):
        load_dataset(f"cifar10:{tmp_path}")


class _RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("archive", [False, True])
def test_restricted_unpickler_refuses_code(tmp_path: Path, archive: bool) -> None:
    folder = _write_cifar(tmp_path / "data", "cifar10", archive=False)
    marker = tmp_path / "pwned"
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": _RunsShell(f"touch {marker}")}, protocol=2))
    target = folder
    if archive:
        target = tmp_path / "cifar-10-python.tar.gz"
        with tarfile.open(target, "w:gz") as tar:
            tar.add(folder, arcname="cifar-10-batches-py")
    with pytest.raises(pickle.UnpicklingError) as caught:
        load_dataset(DataSpec("cifar10", target), download=False)
    assert isinstance(caught.value, UnsafePickleError) and isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert "data_batch_2" in message and "system" in message and "\n" not in message
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------- folders


def test_hymenoptera_train_val() -> None:
    root = shared_file("hymenoptera")
    bundle = load_dataset(f"folder:{root}", input_size=64)
    assert (bundle.kind, bundle.classes, bundle.val_name) == ("folder", ["ants", "bees"], "val")
    assert (len(bundle.train), len(bundle.val)) == (245, 153)
    assert (bundle.input_size, bundle.eval_resize) == (64, 73)
    assert (bundle.mean, bundle.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert isinstance(bundle.train, ImageFolderSplit) and bundle.train.classes == ["ants", "bees"]
    for split, index in ((bundle.train, 0), (bundle.train, len(bundle.train) - 1), (bundle.val, 3)):
        image, label = split[index]
        assert type(image) is torch.Tensor and image.dtype == torch.uint8 and image.shape == (3, 64, 64)
        assert label == split.samples[index][1]
    assert bundle.train.samples[-1][1] == 1
    assert eval_transform(64, 73)(load_image_rgb(bundle.val.samples[0][0])).shape == (3, 64, 64)


def _copy_classes(source: Path, target: Path, counts: dict[str, int]) -> Path:
    for name, count in counts.items():
        (target / name).mkdir(parents=True)
        for path in sorted((source / name).glob("*.jpg"))[:count]:
            shutil.copy(path, target / name / path.name)
    return target


def test_single_folder_split(tmp_path: Path) -> None:
    root = _copy_classes(shared_file("hymenoptera") / "train", tmp_path / "imgs", {"ants": 10, "bees": 7})
    (root / "ants" / ".hidden.jpg").write_bytes(b"not an image")
    (root / "bees" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="ignoring non-image file .*notes.txt"):
        bundle = load_dataset(f"folder:{root}", val_split=0.2, seed=1, input_size=32)
    assert bundle.classes == ["ants", "bees"] and bundle.val_name == "val"
    train_labels = [label for _, label in bundle.train.samples]
    val_labels = [label for _, label in bundle.val.samples]
    assert (val_labels.count(0), val_labels.count(1)) == (2, 1)  # round(10 * 0.2), round(7 * 0.2)
    assert (train_labels.count(0), train_labels.count(1)) == (8, 6)
    train_paths = {path for path, _ in bundle.train.samples}
    val_paths = {path for path, _ in bundle.val.samples}
    assert not train_paths & val_paths and len(train_paths | val_paths) == 17
    assert all(path.suffix == ".jpg" and not path.name.startswith(".") for path in train_paths | val_paths)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the same notes.txt, warned about above
        again = load_dataset(f"folder:{root}", val_split=0.2, seed=1, input_size=32)
        reseeded = [load_dataset(f"folder:{root}", seed=seed).val.samples for seed in range(2, 6)]
    assert again.val.samples == bundle.val.samples and again.train.samples == bundle.train.samples
    assert any(samples != bundle.val.samples for samples in reseeded)
    assert bundle.val[0][0].shape == (3, 32, 32)


def test_tiny_classes_keep_one_val_image(tmp_path: Path) -> None:
    root = _copy_classes(shared_file("hymenoptera") / "train", tmp_path / "imgs", {"ants": 2, "bees": 1})
    # A one-image class cannot be in both splits: it would go unmeasured, which takes --allow-empty-classes.
    with pytest.raises(ValueError, match="class bees has 1 image, so none is held out for val") as caught:
        load_dataset(f"folder:{root}", val_split=0.2)
    assert "--allow-empty-classes" in str(caught.value)
    with pytest.warns(UserWarning, match="none is held out for val"):
        bundle = load_dataset(f"folder:{root}", val_split=0.2, allow_empty_classes=True)
    assert [label for _, label in bundle.val.samples] == [0]
    assert sorted(label for _, label in bundle.train.samples) == [0, 1]


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "one" / "cats").mkdir(parents=True)
    with pytest.raises(ValueError, match="at least 2") as caught:
        load_dataset(f"folder:{tmp_path / 'one'}")
    assert str(tmp_path / "one") in str(caught.value)
    (tmp_path / "one" / "dogs").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "one" / "dogs" / "a.png")
    with pytest.raises(ValueError, match="holds no images") as caught:
        load_dataset(f"folder:{tmp_path / 'one'}")
    assert str(tmp_path / "one" / "cats") in str(caught.value)
    with pytest.raises(ValueError, match="val_split"):
        load_dataset(f"folder:{tmp_path / 'one'}", val_split=1.5)


def test_folder_class_mismatch(tmp_path: Path) -> None:
    for split, names in (("train", ["a", "b"]), ("test", ["a", "c"])):
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(tmp_path / split / name / "x.png")
    with pytest.raises(ValueError, match=r"\['a', 'c'\].*\['a', 'b'\]"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "test" / "c").rename(tmp_path / "test" / "b")
    assert load_dataset(f"folder:{tmp_path}").val_name == "test"


def _mixed_mode_images() -> dict[str, Image.Image]:
    palette = Image.new("P", (6, 5))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((0, 0), 1)
    gray16 = Image.new("I;16", (6, 5))
    gray16.putpixel((0, 0), 65535)
    return {
        "palette.png": palette,  # saved with index 0 transparent
        "gray.png": Image.new("L", (6, 5), 128),
        "gray_alpha.png": Image.new("LA", (6, 5), (0, 0)),
        "rgba.png": Image.new("RGBA", (6, 5), (255, 0, 0, 255)),
        "cmyk.jpg": Image.new("CMYK", (6, 5), (0, 255, 255, 0)),
        "gray16.png": gray16,
        "bilevel.bmp": Image.new("1", (6, 5), 1),
        "float.tif": Image.new("F", (6, 5), 0.5),
    }


def test_mixed_modes_load_as_rgb(tmp_path: Path) -> None:
    for name, image in _mixed_mode_images().items():
        image.save(tmp_path / name, **({"transparency": 0} if name == "palette.png" else {}))
    with Image.open(tmp_path / "palette.png") as palette:
        assert palette.info.get("transparency") is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = {name: load_image_rgb(tmp_path / name) for name in _mixed_mode_images()}
        dataset = ImageFolderSplit([(tmp_path / name, 0) for name in loaded], ["only"])
        tensors = [dataset[i][0] for i in range(len(dataset))]
    assert all(image.mode == "RGB" and image.size == (6, 5) for image in loaded.values())
    assert all(t.dtype == torch.uint8 and t.shape == (3, 5, 6) for t in tensors)
    assert loaded["palette.png"].getpixel((1, 1)) == (255, 255, 255)  # transparent: shown over white
    assert loaded["palette.png"].getpixel((0, 0)) == (0, 255, 0)
    assert loaded["gray_alpha.png"].getpixel((0, 0)) == (255, 255, 255)
    assert loaded["rgba.png"].getpixel((0, 0)) == (255, 0, 0)
    assert loaded["gray16.png"].getpixel((0, 0)) == (255, 255, 255)  # scaled, not clipped
    assert loaded["gray16.png"].getpixel((1, 0)) == (0, 0, 0)
    assert loaded["float.tif"].getpixel((0, 0)) == (128, 128, 128)
    red, green, blue = loaded["cmyk.jpg"].getpixel((0, 0))
    assert red > 200 and green < 60 and blue < 60


def test_bad_files_are_skipped(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("RGB", (10, 8), (1, 2, 3)).save(good)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.png"
    empty.touch()
    dataset = ImageFolderSplit([(good, 0), (corrupt, 1), (empty, 1)], ["a", "b"], eval_transform(8, 9))
    with pytest.warns(UserWarning) as caught:
        items = [dataset[i] for i in range(3)]
    assert items[1] is None and items[2] is None
    messages = [str(w.message) for w in caught]
    assert any("corrupt.jpg" in m for m in messages) and any("empty.png" in m for m in messages)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per file, not once per epoch
        assert dataset[1] is None
    images, labels = collate_skip_bad(items)
    assert images.shape == (1, 3, 8, 8) and images.dtype == torch.uint8
    assert labels.tolist() == [0] and labels.dtype == torch.int64
    assert collate_skip_bad([None])[0].shape[0] == 0
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate_skip_bad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [len(labels) for _, labels in loader] == [1]


# ----------------------------------------------------------------------------------------------- augmentation


def _candidates(image: torch.Tensor, padding: int) -> torch.Tensor:
    """All (2p+1)^2 crops of the zero-padded image, unflipped then flipped: (2 * (2p+1)^2, C, H, W)."""
    _, height, width = image.shape
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    span = 2 * padding + 1
    crops = [padded[:, y : y + height, x : x + width] for y in range(span) for x in range(span)]
    return torch.stack(crops + [crop.flip(-1) for crop in crops])


def test_random_crop_flip_is_a_crop_or_its_mirror() -> None:
    images = torch.randint(1, 256, (6, 3, 7, 5), dtype=torch.uint8)
    out = random_crop_flip(images, padding=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8 and out.device == images.device
    for image, result in zip(images, out):
        matches = (_candidates(image, 2) == result).flatten(1).all(dim=1)
        assert matches.any()


def test_random_crop_flip_distribution() -> None:
    padding, span = 3, 7
    # Distinct non-zero pixels make every (offset, flip) candidate unique, so each output names its draw.
    image = torch.arange(1, 3 * 6 * 5 + 1, dtype=torch.uint8).reshape(3, 6, 5)
    out = random_crop_flip(image.expand(4000, 3, 6, 5), padding, torch.Generator().manual_seed(1))
    matches = (out.flatten(1)[:, None, :] == _candidates(image, padding).flatten(1)[None]).all(dim=2)
    assert torch.equal(matches.sum(dim=1), torch.ones(4000, dtype=torch.long))
    draws = matches.int().argmax(dim=1)
    counts = torch.bincount(draws, minlength=2 * span * span)
    assert (counts > 0).all()  # every offset in [0, 2p] x [0, 2p], flipped and not, occurs
    flipped = (draws >= span * span).float().mean().item()
    assert 0.45 < flipped < 0.55


def test_random_crop_flip_determinism_and_edge_cases() -> None:
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    first = random_crop_flip(images, 4, torch.Generator().manual_seed(7))
    assert torch.equal(first, random_crop_flip(images, 4, torch.Generator().manual_seed(7)))
    assert not torch.equal(first, random_crop_flip(images, 4, torch.Generator().manual_seed(8)))
    unpadded = random_crop_flip(images, 0, torch.Generator().manual_seed(0))
    assert all(torch.equal(o, i) or torch.equal(o, i.flip(-1)) for o, i in zip(unpadded, images))
    assert random_crop_flip(images[:0], 4).shape == (0, 3, 8, 8)
    with pytest.raises(ValueError, match="B, C, H, W"):
        random_crop_flip(images[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_random_crop_flip_cuda() -> None:
    images = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = random_crop_flip(images.cuda(), 4, torch.Generator(device="cuda").manual_seed(0))
    assert out.device == images.cuda().device and out.dtype == torch.uint8 and out.shape == images.shape
    for image, result in zip(images[:8], out[:8].cpu()):
        assert (_candidates(image, 4) == result).flatten(1).all(dim=1).any()
    with pytest.raises(ValueError, match="generator"):
        random_crop_flip(images.cuda(), 4, torch.Generator().manual_seed(0))
