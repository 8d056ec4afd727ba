"""Loading a published network: seconds to read NVIDIA's CelebA-HQ 1024 pickle into a G_ema ready to sample.

The real file (277 MB, CC BY-NC) cannot ship or be fetched by a script, so the benchmark writes a synthetic one
of the same shape (G, D and Gs at the official widths, 1024x1024, latent 512; tests/reference/network_files.py
writes the real format) and times, side by side in one process:

- progan: `load_generator(pickle)` (the allow-list unpickler, the TF -> torch layout mapping, building G);
- the anchor: a plain `pickle.load` of the same file with `tfutil.Network` registered as a stub, which is
  what any loader must at least do (the official loader also exec()s networks.py and builds a TF graph,
  which cannot run on current Python);
- the export progan writes once (`progan export`), loaded back with `load_generator(.safetensors)`.

    python3 benchmarks/pretrained_load.py --repeat 3

Prints one JSON line: seconds (best of --repeat) for each, and the ratio anchor / progan.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from progan_cli.sampling import export_generator, load_generator  # noqa: E402
from reference.network_files import official_variables, write_official_pickle  # noqa: E402


class _Network:  # what a trusting loader registers as tfutil.Network: it keeps the state, runs nothing
    def __setstate__(self, state):
        self.state = state


def _plain_load(path: Path) -> object:
    stub = types.ModuleType("tfutil")
    stub.Network = _Network
    sys.modules["tfutil"] = stub
    try:
        with open(path, "rb") as f:
            return pickle.load(f)  # the anchor, on a file this benchmark wrote itself
    finally:
        del sys.modules["tfutil"]


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--res", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    arch = dict(fmap_base=8192, fmap_max=512, latent_size=512)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "karras2018iclr-synthetic.pkl"
        nets = [official_variables(net, args.res, fused=False, seed=seed, **arch)
                 for seed, net in enumerate(("G", "D", "G"))]  # G, D, Gs: three sets of arrays, as the real file
        write_official_pickle(path, *nets, static_kwargs={"D": {"mbstd_group_size": 16}})
        del nets
        size = path.stat().st_size
        anchor = _best(lambda: _plain_load(path), args.repeat)
        ours = _best(lambda: load_generator(path), args.repeat)
        export = Path(tmp) / "G.safetensors"
        export_generator(load_generator(path), export)
        exported = _best(lambda: load_generator(export), args.repeat)
        export_size = export.stat().st_size
    print(json.dumps({"res": args.res, "pickle_mb": round(size / 1e6, 1), "threads": torch.get_num_threads(),
                      "plain_pickle_s": round(anchor, 3), "progan_pickle_s": round(ours, 3),
                      "progan_export_s": round(exported, 3), "export_mb": round(export_size / 1e6, 1),
                      "ratio_anchor_over_progan": round(anchor / ours, 3)}))


if __name__ == "__main__":
    main()
