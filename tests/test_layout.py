"""The package's shape: packages that import one way, no private name across modules, one atomic writer, each
setting declared once.

(That models/ is a leaf is tests/test_model_imports.py.) A module holds one responsibility; one past about 500
lines is a question for review, not a test failure, since a cap splits files by size rather than by meaning.
"""

import argparse
import ast
import errno
import os
import stat
from dataclasses import fields
from pathlib import Path

import pytest

from lightnets.files import atomic_path, atomic_write, remove_stale_temporaries
from lightnets.train.config import (
    TrainConfig,
    add_config_arguments,
    config_from_values,
    load_config_file,
    validate_config,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "lightnets"

# Each room of the package and its level: a module imports only from lower levels or from its own room. cli/ is the
# only room that sees argv; the top-level __init__ and __main__ re-export and start it.
LEVELS = {
    "lightnets.version": 0,
    "lightnets.models": 0,
    "lightnets.files": 1,
    "lightnets.tables": 1,
    "lightnets.device": 1,
    "lightnets.distributed": 1,
    "lightnets.plots": 2,
    "lightnets.data": 3,
    "lightnets.deploy": 4,
    "lightnets.evaluation": 5,
    "lightnets.prediction": 6,
    "lightnets.train": 7,
    "lightnets.measure": 7,
    "lightnets.cli": 8,
    "lightnets.__main__": 9,
    "lightnets": 9,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    """The longest entry of LEVELS that ``module`` is or lies in."""
    candidates = [name for name in LEVELS if module == name or module.startswith(name + ".")]
    assert candidates, f"{module} belongs to no room of LEVELS: add it there"
    return max(candidates, key=len)


def imports_of(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import of a lightnets module in ``path``, lazy ones included."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "lightnets"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module.split(".")[0] == "lightnets":
                found.append((node.lineno, module, [a.name for a in node.names]))
    return found


SOURCES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_one_way(path):
    here = room(module_name(path))
    upward = []
    for line, module, names in imports_of(path):
        targets = [module] if module != "lightnets" else [f"lightnets.{name}" for name in names]
        for target in targets:
            there = room(target)
            if there != here and LEVELS[there] >= LEVELS[here]:
                upward.append(f"{target} (line {line}, level {LEVELS[there]} from level {LEVELS[here]})")
    assert not upward, f"{module_name(path)} imports upward or sideways: {', '.join(upward)}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_private_name_crosses_modules(path):
    """A name with a leading underscore is its module's own: another module that needs it gets a public name."""
    crossing = [
        f"{name} from {module} (line {line})"
        for line, module, names in imports_of(path)
        for name in names
        if name.startswith("_") and not name.startswith("__") and module != module_name(path)
    ]
    assert not crossing, f"{module_name(path)} imports private names: {', '.join(crossing)}"


def test_the_import_checks_see_upward_relative_and_private_imports(tmp_path, monkeypatch):
    fake = tmp_path / "lightnets"
    (fake / "data").mkdir(parents=True)
    source = fake / "data" / "m.py"
    source.write_text("from lightnets.train.loop import train\nfrom ..cli import main\nfrom .x import _hidden\n")
    monkeypatch.setattr(f"{__name__}.SRC", fake)
    assert [(m, n) for _, m, n in imports_of(source)] == [
        ("lightnets.train.loop", ["train"]),
        ("lightnets.cli", ["main"]),
        ("lightnets.data.x", ["_hidden"]),
    ]
    with pytest.raises(AssertionError, match=r"imports upward or sideways: lightnets\.train\.loop"):
        test_imports_point_one_way(source)
    with pytest.raises(AssertionError, match=r"_hidden from lightnets\.data\.x"):
        test_no_private_name_crosses_modules(source)


def test_at_most_ten_plain_modules_beside_the_subpackages():
    plain = sorted(p.name for p in SRC.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(plain) <= 10, plain
    assert sorted(p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()) == [
        "cli", "data", "deploy", "measure", "models", "train",
    ]  # fmt: skip


def test_atomic_write_is_readable_by_others_and_leaves_no_temporary(tmp_path):
    path = atomic_write(tmp_path / "table.csv", "a,b\n")
    assert path.read_text() == "a,b\n" and stat.S_IMODE(os.stat(path).st_mode) == 0o644
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed while writing")
    assert path.read_text() == "a,b\n" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    secret = atomic_write(tmp_path / "token", "x", mode=0o600)
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600


def test_atomic_write_errors_name_the_target_not_the_temporary(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OSError) as caught:
        atomic_write(blocker / "model.onnx", b"x")
    assert caught.value.filename == str(blocker / "model.onnx") and caught.value.errno in (errno.ENOTDIR, errno.EEXIST)
    assert ".tmp" not in str(caught.value)


def test_stale_temporaries_of_any_writer_are_removed(tmp_path):
    for name in (".summary.csv.k2j3.tmp", ".curves.png.ab12.tmp", ".last.pt.x9.tmp"):
        (tmp_path / name).write_text("left by a SIGKILL")
    (tmp_path / "summary.csv").write_text("kept")
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == sorted(
        [".curves.png.ab12.tmp", ".last.pt.x9.tmp", ".summary.csv.k2j3.tmp"]
    )
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]


def test_every_setting_is_a_flag_with_its_help_and_default():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    flags = {action.dest: action for action in parser._actions if action.dest != "help"}
    assert set(flags) == {f.name for f in fields(TrainConfig)} - {"model_kwargs"}
    assert "(default 256)" in flags["batch_size"].help and all(a.default is None for a in flags.values())
    args = parser.parse_args(["--epochs", "3", "--no-nesterov", "--aug", "colorjitter"])
    config = config_from_values(vars(args), {"epochs": 7, "lr": 0.3})
    assert (config.epochs, config.nesterov, config.lr, config.aug) == (3, False, 0.3, "colorjitter")  # flags win
    with pytest.raises(ValueError, match="invalid --epochs 0: expected an integer >= 1"):
        validate_config(config_from_values({"epochs": 0}))


def test_config_file_errors_name_the_file(tmp_path):
    good = tmp_path / "recipe.yaml"
    good.write_text("batch-size: 64\nlr_base: 0.2\n")
    assert load_config_file(good) == {"batch_size": 64, "lr_base": 0.2}
    for text, expected in [("epochz: 3\n", r"unknown setting\(s\) epochz"), ("- 1\n", "must hold a mapping"),
                           ("a: [1\n", "is not readable YAML")]:  # fmt: skip
        good.write_text(text)
        with pytest.raises(ValueError, match=expected) as caught:
            load_config_file(good)
        assert str(good) in str(caught.value)
    with pytest.raises(ValueError, match="does not exist"):
        load_config_file(tmp_path / "missing.yaml")


def test_config_file_setting_given_twice_is_refused_naming_the_lines(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    for text, expected in [
        ("epochs: 2\nlr: 0.1\nepochs: 3\n", "epochs is set twice (lines 1 and 3); keep one"),
        ("batch-size: 64\nbatch_size: 32\n", "batch_size is set twice (as batch-size and batch_size); keep one"),
        ("- epochs: 2\n", "must hold a mapping of settings (KEY: VALUE lines), not a list"),
    ]:
        recipe.write_text(text)
        with pytest.raises(ValueError) as caught:
            load_config_file(recipe)
        assert str(caught.value).startswith(f"--config {recipe}") and expected in str(caught.value)
        assert "\n" not in str(caught.value)
