"""The model layer stands alone: nothing under src/lightnets/models/ imports lightnets outside lightnets.models.

``create_model(checkpoint=)`` once imported ``lightnets.checkpoint`` and ``lightnets.deploy.export`` lazily from the
registry, which made an import circle (they import the models); loading now sits in ``models/_helpers.py``.
"""

import ast
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parents[1] / "src" / "lightnets" / "models"


def lightnets_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute or relative import of a lightnets module in ``path``, anywhere in it."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "lightnets"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against lightnets.models
                base = "lightnets.models" if node.level == 1 else "lightnets"
                found.append((node.lineno, f"{base}.{node.module}" if node.module else base))
            elif node.module and node.module.split(".")[0] == "lightnets":
                found.append((node.lineno, node.module))
    return sorted(found)


@pytest.mark.parametrize("path", sorted(MODELS.glob("*.py")), ids=lambda p: p.name)
def test_models_import_nothing_of_lightnets_outside_models(path):
    outside = [
        (line, module)
        for line, module in lightnets_imports(path)
        if module != "lightnets.models" and not module.startswith("lightnets.models.")
    ]
    assert not outside, f"{path.name} imports {', '.join(f'{m} (line {n})' for n, m in outside)}"


def test_the_check_sees_lazy_and_relative_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from lightnets.models.layers import ConvBnAct\n"
        "def f():\n    from lightnets.deploy.export import load_weights_into\n"
        "from .. import checkpoint\n"
        "import lightnets.train.loop\n"
    )
    modules = [module for _, module in lightnets_imports(source)]
    assert modules == ["lightnets.models.layers", "lightnets.deploy.export", "lightnets", "lightnets.train.loop"]
