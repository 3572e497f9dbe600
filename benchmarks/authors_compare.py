"""Inference latency of lightnets' deploy forms against the authors' published implementations.

For each family the authors' released model of one architecture is built from their own code and timed
against the lightnets deploy form of the same architecture, ``reparameterize_model(create_model(name))``,
in the same process: same thread count, same input tensor, float32, ``torch.inference_mode``,
``torch.utils.benchmark.Timer.blocked_autorange`` after warm-up calls. The implementations are
interleaved (A, B, A, B, ... with the order rotated every round) and the median over rounds is reported,
so that load from other processes hits all of them alike. Where the authors' repository ships its own
deploy conversion (ParNet's RepVGG fusion, ``validate.py --fuse``), that form is timed as well.

    python benchmarks/authors_compare.py --authors-dir /work/authors --json docs/results/authors_compare.json

The authors' code is never part of this repository: it is imported at run time from ``--authors-dir``
(default ``$LIGHTNETS_AUTHORS_DIR`` or ``/work/authors``), laid out as ``<owner>__<repo>/<path in repo>``:

    xiaolai-sqlai__SPGNet_TMM2021/network/spgnet.py
    megvii-model__ShuffleNet-Series/ShuffleNetV1/{network,blocks}.py
    imankgoyal__NonDeepNetworks/imagenet/timm/models/simplenet_impl/{simpnet,repvgg,utils}.py
    imankgoyal__NonDeepNetworks/imagenet/models/planes_92_192_384_1280_num_blocks_5_6_6_1_sebv_13.yaml
    Spark001__AsymmNet/pytorch/asymmnet.py

Their files are not edited. Two import-time shims, both in this script: ShuffleNet's ``network.py`` does
``from blocks import ...``, so its ``blocks.py`` is registered as ``blocks`` while ``network.py`` loads;
ParNet's ``simplenet_impl`` imports ``timm.models.layers.drop`` and ``timm.models.layers.classifier`` from
the modified timm the repository bundles, which are served from the pip timm installed with lightnets
(``drop_block_fast_2d``, gone from timm 1.x and never called by the model, is a stub).

The exit status is 0 whichever is faster: this is a measurement. Rows where lightnets is slower are
listed plainly at the end.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import importlib.util
import io
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import yaml
from torch import nn

from lightnets.measure.counting import count_macs, count_params
from lightnets.measure.latency import device_name, interleaved_latencies
from lightnets.models import create_model, reparameterize_model

DEFAULT_AUTHORS_DIR = "/work/authors"
PARNET_S_YAML = "imankgoyal__NonDeepNetworks/imagenet/models/planes_92_192_384_1280_num_blocks_5_6_6_1_sebv_13.yaml"


@dataclass(frozen=True)
class Family:
    key: str
    label: str
    ours: str
    repository: str
    build: Callable[[Path], nn.Module]
    deploy: Callable[[nn.Module], nn.Module] | None = None
    note: str = ""


def _load_file(module_name: str, path: Path) -> ModuleType:
    """Import one source file under a private module name (their generic names must not clash)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; see the module docstring for the --authors-dir layout")
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def build_spgnet(root: Path) -> nn.Module:
    spgnet = _load_file("authors_spgnet", root / "xiaolai-sqlai__SPGNet_TMM2021/network/spgnet.py")
    return spgnet.SPGNet(num_classes=1000, version="s2p6")


def build_shufflenet_v1(root: Path) -> nn.Module:
    folder = root / "megvii-model__ShuffleNet-Series/ShuffleNetV1"
    blocks = _load_file("authors_shufflenet_v1_blocks", folder / "blocks.py")
    # network.py does `from blocks import ShuffleV1Block`: serve that name only while it loads.
    previous = sys.modules.get("blocks")
    sys.modules["blocks"] = blocks
    try:
        network = _load_file("authors_shufflenet_v1_network", folder / "network.py")
    finally:
        if previous is None:
            del sys.modules["blocks"]
        else:
            sys.modules["blocks"] = previous
    return network.ShuffleNetV1(input_size=224, n_class=1000, model_size="1.0x", group=3)


def _unused_drop_block_fast_2d(*args: Any, **kwargs: Any) -> torch.Tensor:
    raise NotImplementedError("drop_block_fast_2d is imported by the ParNet code but never called")


def _install_parnet_timm_shim() -> None:
    """Serve the two bundled-timm modules ParNet's simplenet_impl imports from the installed timm."""
    import timm.layers.classifier
    import timm.layers.drop

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import timm.models.layers  # the deprecated alias package must exist as the parent
    drop = ModuleType("timm.models.layers.drop")
    drop.drop_path = timm.layers.drop.drop_path
    drop.drop_block_fast_2d = _unused_drop_block_fast_2d
    sys.modules.setdefault("timm.models.layers.drop", drop)
    sys.modules.setdefault("timm.models.layers.classifier", timm.layers.classifier)


def _flatten(items: list) -> list:
    return [leaf for item in items for leaf in (_flatten(item) if isinstance(item, list) else [item])]


def build_parnet(root: Path) -> nn.Module:
    _install_parnet_timm_shim()
    package = "authors_parnet_simplenet_impl"
    if package not in sys.modules:
        stub = ModuleType(package)
        stub.__path__ = [str(root / "imankgoyal__NonDeepNetworks/imagenet/timm/models/simplenet_impl")]
        sys.modules[package] = stub
    simpnet = importlib.import_module(f"{package}.simpnet")
    config = yaml.safe_load((root / PARNET_S_YAML).read_text())
    # The released yaml nests the list ([['swish']]), so `'swish' in additional_branches` is False and
    # SimpNet(**yaml) would build ReLU blocks; flattened, it builds the SiLU network of the paper and lightnets.
    config["additional_branches"] = _flatten(config["additional_branches"])
    return simpnet.SimpNet(**config)


def deploy_parnet(model: nn.Module) -> nn.Module:
    """The authors' own conversion, as `imagenet/validate.py --fuse` applies it."""
    deployed = copy.deepcopy(model).eval()
    for module in list(deployed.modules()):
        if hasattr(module, "fuse_repvgg_block") and type(module) is not nn.Sequential:
            module.fuse_repvgg_block()
    return deployed


def build_asymmnet(root: Path) -> nn.Module:
    asymmnet = _load_file("authors_asymmnet", root / "Spark001__AsymmNet/pytorch/asymmnet.py")
    return asymmnet.AsymmNet_Large(num_classes=1000, multiplier=1.0)


FAMILIES = (
    Family("spgnet", "SPGNet-s2p6", "spgnet_s2p6", "xiaolai-sqlai/SPGNet_TMM2021", build_spgnet),
    Family(
        "shufflenet_v1",
        "ShuffleNetV1 g3 1.0x",
        "shufflenet_v1_g3_x1_0",
        "megvii-model/ShuffleNet-Series",
        build_shufflenet_v1,
    ),
    Family(
        "parnet",
        "ParNet-S",
        "parnet_s",
        "imankgoyal/NonDeepNetworks",
        build_parnet,
        deploy_parnet,
        note="authors' additional_branches flattened to ['swish'] (SiLU)",
    ),
    Family("asymmnet", "AsymmNet-Large 1.0x", "asymmnet_large_x1_0", "Spark001/AsymmNet", build_asymmnet),
)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "process": time.process_time}


class ForeignLoad:
    """Share of all CPUs that other processes used between ``start()`` and ``stop()`` (Linux /proc/stat).

    Printed beside each timing so a reader can tell a clean measurement from one taken on a busy machine.
    """

    def __init__(self) -> None:
        self._start: tuple[float, float, float] | None = None

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0.0)) / ticks  # minus idle, iowait
        own = sum(os.times()[:4])
        return busy, own, time.perf_counter()

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> float | None:
        end = self._sample()
        if self._start is None or end is None or end[2] <= self._start[2]:
            return None
        busy, own, wall = (b - a for a, b in zip(self._start, end))
        return max(0.0, (busy - own) / (wall * (os.cpu_count() or 1)))


def max_abs_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.inference_mode():
        return (a(x) - b(x)).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--authors-dir",
        default=os.environ.get("LIGHTNETS_AUTHORS_DIR", DEFAULT_AUTHORS_DIR),
        help="root of the authors' code, <owner>__<repo>/<path> (default: $LIGHTNETS_AUTHORS_DIR or /work/authors)",
    )
    parser.add_argument("--families", default=",".join(f.key for f in FAMILIES), help="comma-separated subset")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the median over them is reported")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per blocked_autorange")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per implementation first")
    parser.add_argument(
        "--keep-denormals",
        action="store_true",
        help="do not flush denormals to zero (by default they are flushed: random-init weights can push one "
        "network's activations into the denormal range, which would time the initialisation, not the code)",
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time (the figure to report); process: CPU seconds of this process, which other "
        "processes' load does not inflate, for comparisons on a busy machine (use with --threads 1)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the settings, parameter counts and timings here")
    args = parser.parse_args()

    wanted = [key.strip() for key in args.families.split(",") if key.strip()]
    unknown = sorted(set(wanted) - {f.key for f in FAMILIES})
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {[f.key for f in FAMILIES]}")
    families = [f for f in FAMILIES if f.key in wanted]
    root = Path(args.authors_dir)
    torch.set_num_threads(args.threads)
    flush_denormal = not args.keep_denormals and torch.set_flush_denormal(True)
    settings = {
        "authors_dir": str(root),
        "batch_sizes": args.batch_sizes,
        "image_size": args.image_size,
        "threads": args.threads,
        "rounds": args.rounds,
        "min_run_time": args.min_run_time,
        "warmup": args.warmup,
        "flush_denormal": flush_denormal,
        "clock": args.clock,
        "dtype": "float32",
        "torch": torch.__version__,
        "cpu": device_name("cpu"),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "load_average_at_start": list(os.getloadavg()),
    }
    print(
        f"torch {torch.__version__}, {settings['cpu']}, {args.threads} threads, float32, inference_mode; "
        f"input {args.image_size}; {args.rounds} interleaved rounds of blocked_autorange("
        f"min_run_time={args.min_run_time}) after {args.warmup} warm-up calls; {args.clock} clock; "
        f"flush denormals: {flush_denormal}"
    )

    complexity_rows: list[dict[str, Any]] = []
    timing_rows: list[dict[str, Any]] = []
    for family in families:
        torch.manual_seed(args.seed)
        with redirect_stdout(io.StringIO()):  # their constructors print
            authors = family.build(root).eval()
        authors_deploy = family.deploy(authors) if family.deploy else None
        ours_train = create_model(family.ours).eval()
        ours = reparameterize_model(ours_train).eval()
        size = args.image_size
        row = {
            "family": family.label,
            "ours_model": family.ours,
            "authors_repository": family.repository,
            "ours_params": count_params(ours_train),
            "ours_deploy_params": count_params(ours),
            "authors_params": count_params(authors),
            "authors_deploy_params": count_params(authors_deploy) if authors_deploy is not None else None,
            "ours_macs": count_macs(ours_train, size),
            "ours_deploy_macs": count_macs(ours, size),
            "authors_macs": count_macs(authors, size),
            "authors_deploy_macs": count_macs(authors_deploy, size) if authors_deploy is not None else None,
            "note": family.note,
        }
        probe = torch.randn(2, 3, size, size)
        row["ours_deploy_vs_train_max_abs_diff"] = max_abs_diff(ours, ours_train, probe)
        if authors_deploy is not None:
            row["authors_deploy_vs_train_max_abs_diff"] = max_abs_diff(authors_deploy, authors, probe)
        complexity_rows.append(row)
        row["same_params"] = row["ours_params"] == row["authors_params"]
        row["same_macs"] = row["ours_macs"] == row["authors_macs"]
        deploy_params = f", their deploy {row['authors_deploy_params']:,}" if authors_deploy is not None else ""
        deploy_macs = f", their deploy {row['authors_deploy_macs'] / 1e6:.1f} M" if authors_deploy is not None else ""
        verdict = ", ".join(
            f"{what} {'identical' if same else 'DIFFERENT'}"
            for what, same in (("params", row["same_params"]), ("MACs", row["same_macs"]))
        )
        print(
            f"\n{family.label} ({verdict}; {family.ours} vs {family.repository})\n"
            f"  params ours {row['ours_params']:,} (deploy {row['ours_deploy_params']:,}) | "
            f"authors {row['authors_params']:,}{deploy_params}\n"
            f"  MACs   ours {row['ours_macs'] / 1e6:.1f} M (deploy {row['ours_deploy_macs'] / 1e6:.1f} M) | "
            f"authors {row['authors_macs'] / 1e6:.1f} M{deploy_macs}"
            + (f"\n  note: {family.note}" if family.note else ""),
            flush=True,
        )
        del ours_train

        models = {"ours_deploy": ours, "authors": authors}
        if authors_deploy is not None:
            models["authors_deploy"] = authors_deploy
        for batch in args.batch_sizes:
            x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(args.seed + batch))
            with torch.inference_mode():
                shapes = {name: tuple(model(x).shape) for name, model in models.items()}
            same_shape = len(set(shapes.values())) == 1
            if not same_shape:
                print(f"  WARNING: output shapes differ at batch {batch}: {shapes}")
            load = ForeignLoad()
            load.start()
            calls = {name: functools.partial(model, x) for name, model in models.items()}
            samples = interleaved_latencies(
                calls, args.threads, args.rounds, args.min_run_time, args.warmup, CLOCKS[args.clock]
            )
            foreign = load.stop()
            ms = {name: 1e3 * statistics.median(values) for name, values in samples.items()}
            timing = {
                "family": family.label,
                "ours_model": family.ours,
                "batch_size": batch,
                "output_shape": list(shapes["ours_deploy"]),
                "same_output_shape": same_shape,
                "ours_deploy_ms": ms["ours_deploy"],
                "authors_ms": ms["authors"],
                "authors_deploy_ms": ms.get("authors_deploy"),
                "ratio_authors_over_ours": ms["authors"] / ms["ours_deploy"],
                "ratio_authors_deploy_over_ours": (
                    ms["authors_deploy"] / ms["ours_deploy"] if "authors_deploy" in ms else None
                ),
                "other_processes_cpu_share": foreign,
                "rounds_ms": {name: [1e3 * v for v in values] for name, values in samples.items()},
            }
            timing_rows.append(timing)
            spread = ", ".join(f"{name} {1e3 * min(v):.2f}-{1e3 * max(v):.2f}" for name, v in samples.items())
            busy = f"; other processes used {100 * foreign:.0f} % of the CPUs" if foreign is not None else ""
            print(f"  batch {batch:3d}: " + ", ".join(f"{n} {v:.2f} ms" for n, v in ms.items()))
            print(f"             rounds min-max: {spread}{busy}", flush=True)

    print(
        "\n| family | batch | ours deploy ms | authors ms | authors deploy ms | authors/ours | authors deploy/ours "
        "| other CPU load |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in timing_rows:
        deploy_ms = f"{t['authors_deploy_ms']:.2f}" if t["authors_deploy_ms"] is not None else "-"
        deploy_ratio = (
            f"x{t['ratio_authors_deploy_over_ours']:.2f}" if t["ratio_authors_deploy_over_ours"] is not None else "-"
        )
        foreign = t["other_processes_cpu_share"]
        busy = f"{100 * foreign:.0f} %" if foreign is not None else "-"
        print(
            f"| {t['family']} | {t['batch_size']} | {t['ours_deploy_ms']:.2f} | {t['authors_ms']:.2f} | "
            f"{deploy_ms} | x{t['ratio_authors_over_ours']:.2f} | {deploy_ratio} | {busy} |"
        )
    slower = []
    for t in timing_rows:
        for key, label in (("authors_ms", "authors' model"), ("authors_deploy_ms", "authors' own deploy form")):
            if t[key] is not None and t["ours_deploy_ms"] > t[key]:
                slower.append(
                    f"  {t['family']} batch {t['batch_size']}: ours {t['ours_deploy_ms']:.2f} ms is SLOWER than the "
                    f"{label} {t[key]:.2f} ms (x{t['ours_deploy_ms'] / t[key]:.2f} the time)"
                )
    print("\nlightnets deploy form slower than the authors' code:" if slower else "\nlightnets is never slower.")
    print("\n".join(slower))
    if args.json:
        payload = {"settings": settings, "complexity": complexity_rows, "rows": timing_rows}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
