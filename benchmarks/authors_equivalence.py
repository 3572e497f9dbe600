"""Are lightnets' networks the authors' networks? Their weights, loaded through ``create_model``, give their outputs.

For every variant of the four families that the authors' code builds, this script

1. builds the authors' model from their own code with random weights and randomised BN statistics (running mean
   and variance, weight and bias of every BN, so that no BN is the identity);
2. saves it with their own training code's saving function, in each container format it writes, e.g. megvii's
   ``{'state_dict': ...}`` of a DataParallel model (``module.`` keys) and its bare ``model.mdl``;
3. loads every file through ``lightnets.create_model(name, checkpoint=FILE)`` (ParNet with ``act_layer="relu"``,
   which is what their released code runs) and checks that all files of a variant give the same weights;
4. compares the outputs on one random 224x224 batch in eval mode: max |ours - theirs| relative to max |theirs|
   must be <= 1e-4 and the argmax must agree. For ParNet the fused forms are compared too: the authors' own
   ``fuse_repvgg_block`` (as ``validate.py --fuse``) against lightnets' ``reparameterize_model``.

    python benchmarks/authors_equivalence.py --authors-dir /work/authors --json docs/results/authors_equivalence.json

``--write-manifests tests/manifests`` also records, per family, the key names and shapes of the authors' state
dicts (``tests/test_authors_weights.py`` tests the converters against them without the authors' code).

The authors' code is never part of this repository: it is imported at run time from ``--authors-dir``, laid out
as ``benchmarks/authors_compare.py`` describes (``<owner>__<repo>/<path in repo>``), plus the saving code:
``megvii-model__ShuffleNet-Series/ShuffleNetV1/utils.py``, ``xiaolai-sqlai__SPGNet_TMM2021/utils.py`` and
``imankgoyal__NonDeepNetworks/imagenet/timm/utils/checkpoint_saver.py``. Shims, all here and at run time:
those of authors_compare.py; ParNet's ``checkpoint_saver.py`` imports ``.model`` from its bundled timm, served
from the installed timm's ``timm.utils.model``; SPGNet's script trains under DistributedDataParallel, which needs
a process group, so ``nn.DataParallel`` (same ``module.`` keys) stands in for it, as it does for megvii's
DataParallel on a machine without GPUs. The AsymmNet port has no saving code: its files are ``torch.save`` of its
state dict, bare and DataParallel-wrapped. The exit status is 1 when any variant differs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import yaml
from torch import nn

from lightnets.models import create_model, reparameterize_model

HERE = Path(__file__).resolve().parent
DEFAULT_AUTHORS_DIR = "/work/authors"
TOLERANCE = 1e-4
NDN = "imankgoyal__NonDeepNetworks/imagenet"
PARNET_YAMLS = {
    "s": "planes_92_192_384_1280_num_blocks_5_6_6_1_sebv_13.yaml",
    "m": "planes_128_256_512_2048_num_blocks_5_6_6_1_sebv_13.yaml",
    "l": "planes_160_320_640_2560_num_blocks_5_6_6_1_sebv_13_dropout_lin.yaml",
    "xl": "reg_se13_cosine_planes_200_400_800_3200_num_blocks_5_6_6_1_sebv_13_dropout_lin.yaml",
}


def _authors_compare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("authors_compare", HERE / "authors_compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["authors_compare"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


AC = _authors_compare()


@dataclass(frozen=True)
class Variant:
    family: str
    ours: str
    authors_call: str  # how their model is built, for the record
    build: Callable[[Path], nn.Module]
    save: Callable[[Path, nn.Module, Path], list[tuple[str, Path, dict]]]  # -> (format, file, extra kwargs)
    ours_kwargs: tuple[tuple[str, Any], ...] = ()


def randomize(model: nn.Module, seed: int) -> None:
    """Random BN statistics and affine parameters everywhere (the other weights are random from their init)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
                module.num_batches_tracked.fill_(1000)


@contextlib.contextmanager
def working_directory(path: Path):
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


# ------------------------------------------------------------------------------------------------ the families


def authors_module(root: Path, name: str) -> ModuleType:
    """One of the authors' files, imported once under a private name (authors_compare.py's loaders and shims)."""
    private = f"authors_{name}"
    if private in sys.modules:
        return sys.modules[private]
    if name == "shufflenet_v1_network":
        AC.build_shufflenet_v1(root)  # imports blocks.py, then network.py with `blocks` served to it
    elif name == "parnet_simplenet_impl.simpnet":
        AC._install_parnet_timm_shim()
        package = "authors_parnet_simplenet_impl"
        stub = ModuleType(package)
        stub.__path__ = [str(root / NDN / "timm/models/simplenet_impl")]
        sys.modules.setdefault(package, stub)
        importlib.import_module(private)
    else:
        files = {
            "shufflenet_v1_utils": "megvii-model__ShuffleNet-Series/ShuffleNetV1/utils.py",
            "spgnet": "xiaolai-sqlai__SPGNet_TMM2021/network/spgnet.py",
            "spgnet_utils": "xiaolai-sqlai__SPGNet_TMM2021/utils.py",
            "asymmnet": "Spark001__AsymmNet/pytorch/asymmnet.py",
        }
        AC._load_file(private, root / files[name])
    return sys.modules[private]


def build_shufflenet(root: Path, group: int, size: str) -> nn.Module:
    network = authors_module(root, "shufflenet_v1_network")
    return network.ShuffleNetV1(input_size=224, n_class=1000, model_size=size, group=group)


def save_shufflenet(root: Path, model: nn.Module, out: Path) -> list[tuple[str, Path, dict]]:
    utils = authors_module(root, "shufflenet_v1_utils")
    wrapped = nn.DataParallel(model)  # train.py trains under DataParallel: every key starts with "module."
    with working_directory(out):
        utils.save_checkpoint({"state_dict": wrapped.state_dict()}, 300000, tag="bnps-")  # ./models/...
        torch.save(model.state_dict(), "model.mdl")  # train.py's last line, as it runs without a GPU
    checkpoint = out / "models" / "bnps-checkpoint-300000.pth.tar"
    return [("{'state_dict'} of DataParallel", checkpoint, {}), ("bare model.mdl", out / "model.mdl", {})]


def build_spgnet(root: Path, version: str) -> nn.Module:
    return authors_module(root, "spgnet").SPGNet(num_classes=1000, version=version)


def save_spgnet(root: Path, model: nn.Module, out: Path) -> list[tuple[str, Path, dict]]:
    utils = authors_module(root, "spgnet_utils")
    ema = utils.ModelEma(model, decay=0.9999, device="", resume="")  # made before the DDP wrap, as they do
    wrapped = nn.DataParallel(model)  # stands in for DistributedDataParallel: the same "module." keys
    utils.save_checkpoint(str(out), {"state_dict": wrapped.state_dict()}, 1000, tag="bnps-")
    utils.save_checkpoint(str(out), {"state_dict_ema": ema.ema.state_dict()}, 1000, tag="bnps-ema-")
    release = out / "spgnet_release.tar"
    torch.save({"state_dict": model.state_dict()}, release)  # README: torch.load(...)["state_dict"], plain keys
    return [
        ("training {'state_dict'} (module.)", out / "bnps-checkpoint-001000.pth.tar", {}),
        ("EMA {'state_dict_ema'}", out / "bnps-ema-checkpoint-001000.pth.tar", {}),
        ("release {'state_dict'}", release, {}),
    ]


def build_parnet(root: Path, variant: str) -> nn.Module:
    simpnet = authors_module(root, "parnet_simplenet_impl.simpnet")
    config = yaml.safe_load((root / NDN / "models" / PARNET_YAMLS[variant]).read_text())
    config = {k: v for k, v in config.items() if k in ("planes", "num_blocks", "dropout_lin", "additional_branches")}
    return simpnet.SimpNet(**config)  # as released: the nested [['swish']] gives ReLU blocks


def save_parnet(root: Path, model: nn.Module, out: Path) -> list[tuple[str, Path, dict]]:
    import timm.utils.model

    package = "authors_ndn_timm_utils"
    if package not in sys.modules:
        stub = ModuleType(package)
        stub.__path__ = [str(root / NDN / "timm/utils")]
        sys.modules[package] = stub
        sys.modules[f"{package}.model"] = timm.utils.model  # their `from .model import unwrap_model, ...`
    saver_module = importlib.import_module(f"{package}.checkpoint_saver")
    from timm.utils import ModelEmaV2

    ema = ModelEmaV2(model, decay=0.9999)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, nesterov=True)
    args = argparse.Namespace(model="simplenet_repvgg", model_cfg=f"./models/{PARNET_YAMLS['s']}", lr=0.001)
    saver = saver_module.CheckpointSaver(
        model=model, optimizer=optimizer, args=args, model_ema=ema, checkpoint_dir=str(out), recovery_dir=str(out)
    )
    saver.save_checkpoint(epoch=119, metric=75.0)
    best = out / "model_best.pth.tar"
    return [
        ("timm CheckpointSaver 'state_dict'", best, {}),
        ("timm CheckpointSaver 'state_dict_ema'", best, {"ema": True}),
    ]


def build_asymmnet(root: Path, kind: str, multiplier: float) -> nn.Module:
    asymmnet = authors_module(root, "asymmnet")
    return getattr(asymmnet, f"AsymmNet_{kind.title()}")(num_classes=1000, multiplier=multiplier)


def save_asymmnet(root: Path, model: nn.Module, out: Path) -> list[tuple[str, Path, dict]]:
    torch.save(model.state_dict(), out / "asymmnet.pth")
    torch.save(nn.DataParallel(model).state_dict(), out / "asymmnet_dp.pth")
    return [("bare state dict", out / "asymmnet.pth", {}), ("bare state dict (module.)", out / "asymmnet_dp.pth", {})]


def variants() -> list[Variant]:
    found = []
    for group in (3, 8):
        for size in ("0.5", "1.0", "1.5", "2.0"):
            ours = f"shufflenet_v1_g{group}_x{size.replace('.', '_')}"
            call = f"ShuffleNetV1(model_size='{size}x', group={group})"

            def build(root, g=group, s=size):
                return build_shufflenet(root, g, f"{s}x")

            found.append(Variant("shufflenet_v1", ours, call, build, save_shufflenet))
    for p in (6, 7, 8, 9):
        found.append(
            Variant(
                "spgnet",
                f"spgnet_s2p{p}",
                f"SPGNet(version='s2p{p}')",
                lambda r, v=f"s2p{p}": build_spgnet(r, v),
                save_spgnet,
            )
        )
    for v in PARNET_YAMLS:
        found.append(
            Variant(
                "parnet",
                f"parnet_{v}",
                f"SimpNet(**{PARNET_YAMLS[v]})",
                lambda r, v=v: build_parnet(r, v),
                save_parnet,
                (("act_layer", "relu"),),
            )
        )
    for kind in ("large", "small"):
        for m in (0.35, 0.5, 0.75, 1.0):
            ours = f"asymmnet_{kind}_x{str(m).replace('.', '_')}"
            call = f"AsymmNet_{kind.title()}(multiplier={m})"
            found.append(Variant("asymmnet", ours, call, lambda r, k=kind, m=m: build_asymmnet(r, k, m), save_asymmnet))
    return found


# --------------------------------------------------------------------------------------------------- compare


def compare(ours: nn.Module, theirs: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    with torch.inference_mode():
        a, b = ours(x).float(), theirs(x).float()
    diff = (a - b).abs().max().item()
    scale = b.abs().max().item()
    rel = diff / scale if scale > 0 else diff
    same_argmax = bool(torch.equal(a.argmax(1), b.argmax(1)))
    return {"max_abs_diff": diff, "max_abs_logit": scale, "rel_diff": rel, "argmax_equal": same_argmax}


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def run_variant(variant: Variant, root: Path, x: torch.Tensor, seed: int, manifests: dict) -> dict[str, Any]:
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # their constructors print
        theirs = variant.build(root).eval()
    randomize(theirs, seed)
    manifests.setdefault(variant.family, {})[variant.ours] = {k: list(v.shape) for k, v in theirs.state_dict().items()}
    row: dict[str, Any] = {"family": variant.family, "model": variant.ours, "authors": variant.authors_call}
    with tempfile.TemporaryDirectory() as tmp:
        files = variant.save(root, theirs, Path(tmp))
        loaded = []
        for label, path, extra in files:
            model = create_model(variant.ours, checkpoint=str(path), **dict(variant.ours_kwargs), **extra).eval()
            loaded.append((label, model))
    row["formats"] = [label for label, _ in loaded]
    row["loaded"] = loaded[0][1].pretrained_cfg["loaded"]
    ours = loaded[0][1]
    row["formats_agree"] = all(same_weights(ours, model) for _, model in loaded[1:])
    row.update(compare(ours, theirs, x))
    if variant.family == "parnet":
        their_fused = AC.deploy_parnet(theirs)
        fused = compare(reparameterize_model(ours), their_fused, x)
        row.update({f"fused_{k}": v for k, v in fused.items()})
    row["identical"] = (
        all(
            row[f"{p}rel_diff"] <= TOLERANCE and row[f"{p}argmax_equal"]
            for p in ("", "fused_")
            if f"{p}rel_diff" in row
        )
        and row["formats_agree"]
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors-dir", default=os.environ.get("LIGHTNETS_AUTHORS_DIR", DEFAULT_AUTHORS_DIR))
    parser.add_argument("--families", default="shufflenet_v1,spgnet,parnet,asymmnet", help="comma-separated subset")
    parser.add_argument("--models", default="*", help="shell patterns over lightnets names, comma-separated")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the settings and one row per variant here")
    parser.add_argument("--write-manifests", metavar="DIR", help="write <family>.json key/shape manifests here")
    args = parser.parse_args()

    import fnmatch

    root = Path(args.authors_dir)
    torch.set_num_threads(args.threads)
    families = {f.strip() for f in args.families.split(",") if f.strip()}
    patterns = [p.strip() for p in args.models.split(",") if p.strip()]
    chosen = [v for v in variants() if v.family in families and any(fnmatch.fnmatchcase(v.ours, p) for p in patterns)]
    x = torch.randn(args.batch_size, 3, 224, 224, generator=torch.Generator().manual_seed(args.seed))
    rows, manifests = [], {}
    print(f"torch {torch.__version__}; input {tuple(x.shape)}; tolerance {TOLERANCE} relative to max |logit|")
    for variant in chosen:
        start = time.perf_counter()
        row = run_variant(variant, root, x, args.seed, manifests)
        rows.append(row)
        fused = (
            f"; fused rel {row['fused_rel_diff']:.1e}, argmax {'=' if row['fused_argmax_equal'] else 'DIFFERENT'}"
            if "fused_rel_diff" in row
            else ""
        )
        print(
            f"{variant.ours:24s} {'identical' if row['identical'] else 'DIFFERENT'}: max abs {row['max_abs_diff']:.2e}"
            f" (rel {row['rel_diff']:.1e}), argmax {'=' if row['argmax_equal'] else 'DIFFERENT'}{fused}; "
            f"{len(row['formats'])} formats {'agree' if row['formats_agree'] else 'DISAGREE'} "
            f"[{time.perf_counter() - start:.0f} s]",
            flush=True,
        )
    if args.json:
        settings = {"torch": torch.__version__, "input": list(x.shape), "seed": args.seed, "tolerance": TOLERANCE}
        settings["date"] = time.strftime("%Y-%m-%d")
        Path(args.json).write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    if args.write_manifests:
        write_manifests(Path(args.write_manifests), manifests)
    differ = [row["model"] for row in rows if not row["identical"]]
    print(
        f"\n{len(rows) - len(differ)} of {len(rows)} identical"
        + (f"; DIFFERENT: {', '.join(differ)}" if differ else "")
    )
    return 1 if differ else 0


REPOSITORIES = {
    "shufflenet_v1": "megvii-model/ShuffleNet-Series ShuffleNetV1/network.py, blocks.py",
    "spgnet": "xiaolai-sqlai/SPGNet_TMM2021 network/spgnet.py",
    "parnet": "imankgoyal/NonDeepNetworks imagenet/timm/models/simplenet_impl/simpnet.py",
    "asymmnet": "Spark001/AsymmNet pytorch/asymmnet.py",
}


def write_manifests(folder: Path, manifests: dict[str, dict[str, dict[str, list[int]]]]) -> None:
    """One JSON per family: the authors' state-dict key lists ("layouts", shared by the variants of one
    structure) and, per lightnets model, its layout and the shape of every key in that order."""
    folder.mkdir(parents=True, exist_ok=True)
    for family, models in manifests.items():
        layouts: list[list[str]] = []
        entries = []
        for name, keys in models.items():
            if list(keys) not in layouts:
                layouts.append(list(keys))
            layout = layouts.index(list(keys))
            shapes = json.dumps(list(keys.values()), separators=(",", ":"))
            entries.append(f'    {json.dumps(name)}: {{"layout": {layout}, "shapes": {shapes}}}')
        lines = ["{", f'  "source": {json.dumps(REPOSITORIES[family])},', '  "layouts": [']
        for i, keys in enumerate(layouts):
            body = ",\n".join(f"      {json.dumps(k)}" for k in keys)
            lines.append("    [\n" + body + "\n    ]" + ("," if i < len(layouts) - 1 else ""))
        lines += ["  ],", '  "models": {', ",\n".join(entries), "  }", "}"]
        text = "\n".join(lines) + "\n"
        json.loads(text)  # well-formed, or fail here rather than in the tests
        (folder / f"{family}.json").write_text(text)
        print(f"wrote {folder / f'{family}.json'} ({len(models)} models, {len(layouts)} key layouts)")


if __name__ == "__main__":
    sys.exit(main())
