"""Forward paths must trace to ONNX with a dynamic batch: no `.data`, no reshape with two -1s."""

import ast
from pathlib import Path

import pytest

MODEL_SOURCES = sorted((Path(__file__).resolve().parents[1] / "src" / "lightnets" / "models").glob("*.py"))


@pytest.mark.parametrize("path", MODEL_SOURCES, ids=lambda p: p.name)
def test_no_data_attribute_and_no_double_inferred_reshape(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        assert not (isinstance(node, ast.Attribute) and node.attr == "data"), f"{path.name}:{node.lineno} uses .data"
        is_reshape = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        if is_reshape and node.func.attr in {"view", "reshape", "unflatten"}:
            flat = [a for arg in node.args for a in ast.walk(arg)]
            inferred = [a for a in flat if isinstance(a, ast.UnaryOp) and getattr(a.operand, "value", None) == 1]
            assert len(inferred) < 2, f"{path.name}:{node.lineno} reshapes with two -1s"
