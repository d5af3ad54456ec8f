"""Two measurements on a GPU that decide how image models are converted and run there.

    python bench/gpu_probe.py --folder models/mobilenet_v2/1 --refs refs.npz --json probe.json

1. First run of a new batch size under CUDA provider option sets: cuDNN builds its convolution
   plans per input shape, so a dynamic batcher meets this cost on live requests.
2. fp16 conversions that keep different operations in fp32, against the fp32 CPU outputs of
   `bench/gpu_fidelity.py save` (32 photo crops): cosine min / mean, and the batch-64 rate
   with host in/out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedder.core.runtime import CPU, CUDA, provider_options  # noqa: E402

OPTION_SETS = {
    "ours (HEURISTIC)": {},
    "DEFAULT algo search": {"cudnn_conv_algo_search": "DEFAULT"},
    "prefer_nhwc": {"prefer_nhwc": "1"},
    "no max workspace": {"cudnn_conv_use_max_workspace": "0"},
    "fuse_conv_bias": {"fuse_conv_bias": "1"},
}


def session(path: Path, extra: dict[str, str]):
    import onnxruntime as ort

    chain = provider_options([CUDA, CPU], path.parent)
    chain[0] = (CUDA, {**chain[0][1], **extra})
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the cuDNN frontend's per-plan errors are what we time
    return ort.InferenceSession(str(path), options, providers=chain)


def first_calls(path: Path, pixels: np.ndarray) -> dict:
    out = {}
    for name, extra in OPTION_SETS.items():
        try:
            s = session(path, extra)
        except Exception as exc:  # an option this build does not know
            out[name] = {"error": str(exc)[:200]}
            continue
        s.run(["features"], {"pixels": pixels[:2]})
        times = {}
        for n in (3, 5, 12):
            t = time.perf_counter()
            s.run(["features"], {"pixels": pixels[:n]})
            first = time.perf_counter() - t
            t = time.perf_counter()
            s.run(["features"], {"pixels": pixels[:n]})
            times[n] = {"first_ms": 1000 * first, "second_ms": 1000 * (time.perf_counter() - t)}
        out[name] = times
        print(name, json.dumps(times))
    return out


def variants(folder: Path) -> dict[str, bytes]:
    from export.variants import depthwise_convs, fp16_model

    source = onnx.load(str(folder / "model.onnx"))
    nodes = list(source.graph.node)
    first_conv = next(i for i, n in enumerate(nodes) if n.op_type == "Conv")
    head = tuple(n.name for n in nodes[: first_conv + 1])  # input normalisation, first conv
    pooling = ("GlobalAveragePool", "ReduceMean", "Flatten")
    plans = {
        "default block list": ((), ()),
        "pooling fp32": (pooling, ()),
        "input + first conv fp32": ((), head),
        "depthwise fp32": ((), tuple(depthwise_convs(source.graph))),
        "pooling + input + first conv fp32": (pooling, head),
    }
    return {name: fp16_model(onnx.load(str(folder / "model.onnx")), ops, node_names)
            .SerializeToString() for name, (ops, node_names) in plans.items()}  # fmt: skip


def fidelity(folder: Path, refs: np.lib.npyio.NpzFile, work: Path) -> dict:
    from embedder.core.runtime import ModelSession
    from embedder.core.vectors import cosine_rows

    pixels, fp32 = refs["mobilenet_v2/inputs"], refs["mobilenet_v2/fp32"]
    out = {}
    for name, blob in variants(folder).items():
        path = work / f"{name.replace(' ', '_')}.onnx"
        path.write_bytes(blob)
        s = session(path, {})
        model = ModelSession(None, folder, s, s.get_providers(), "fp16", (32, 64))
        got = model.features({"pixels": pixels})
        cos = cosine_rows(got, fp32)
        batch = {"pixels": np.concatenate([pixels, pixels])}
        model.features(batch)
        t, runs = time.perf_counter(), 0
        while time.perf_counter() - t < 2:
            model.features(batch)
            runs += 1
        rate = 64 * runs / (time.perf_counter() - t)
        out[name] = {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
                     "finite": bool(np.isfinite(got).all()), "batch64_items_s": rate}  # fmt: skip
        print(name, json.dumps(out[name]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--folder", type=Path, required=True, help="mobilenet_v2/1 with model.onnx")
    p.add_argument("--refs", type=Path, required=True)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    import tempfile

    refs = np.load(args.refs)
    pixels = np.concatenate([refs["mobilenet_v2/inputs"]] * 2)
    result = {"first_calls": first_calls(args.folder / "model.fp16.onnx", pixels)}
    with tempfile.TemporaryDirectory() as work:
        result["fp16_variants"] = fidelity(args.folder, refs, Path(work))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
