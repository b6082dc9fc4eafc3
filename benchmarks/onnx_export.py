"""`mnistlab export` on every zoo model: how long exporting takes, how close ONNX Runtime's outputs are to
PyTorch's, and how fast ONNX Runtime classifies against mnistlab's own inference on the same CPU.

Each model is built with its defaults and seeded random weights, in the layout ``load_model`` gives it, and
exported with :func:`mnistlab.export_onnx` (which runs its own check: ``check diff`` is the largest
difference on its 65 random images of a logit, relative to the largest logit, or of a probability). Then ONNX
Runtime (CPU, its default threads) and PyTorch (``predict_logits``, the path ``evaluate`` and ``predict``
take: oneDNN's blocked layout for ``cnn`` and ``fast``) classify the same ``--images`` random images in
batches of ``--batch-size``, alternating (after a pause of PAUSE seconds each, for ONNX Runtime's threads
to stop spinning), ``--repeats`` times each; the medians and their ratio are printed,
with how many images got the same class from both.

    .venv/bin/python benchmarks/onnx_export.py
    .venv/bin/python benchmarks/onnx_export.py --models cnn fast --images 10000
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mnistlab import export_onnx
from mnistlab.bench import benchmark_parser, format_table, machine_description, parse_benchmark_args
from mnistlab.errors import ConfigError
from mnistlab.models import build_model, list_models
from mnistlab.training.evaluate import predict_logits
from mnistlab.training.fit import use_channels_last

PAUSE = 0.5  # seconds before each timed run


def row(name: str, folder: Path, images: int, batch_size: int, repeats: int) -> dict | None:
    import onnxruntime as ort

    torch.manual_seed(0)
    try:
        model = build_model(name)
    except ConfigError:  # `vgg` has no default layout to build
        return None
    if use_channels_last(None, model, torch.device("cpu")):
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    t0 = time.perf_counter()
    result = export_onnx(model, folder / f"{name}.onnx", name=name)
    export_s = time.perf_counter() - t0
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = torch.rand(images, 1, 28, 28, generator=torch.Generator().manual_seed(1))

    def onnx_logits() -> torch.Tensor:
        parts = [session.run(["logits"], {"images": x[i:i + batch_size].numpy()})[0]
                 for i in range(0, images, batch_size)]
        return torch.from_numpy(np.concatenate(parts))

    ours, theirs = predict_logits(model, x, batch_size), onnx_logits()  # warm-up, and the classes compared
    torch_s, onnx_s = [], []
    for _ in range(repeats):  # alternating, so that both see the same load
        # After a run ONNX Runtime's threads spin a while, waiting for more work (its default, which
        # shortens its own runs): without the pause they took the 2 cores from the PyTorch run after them.
        time.sleep(PAUSE)
        t0 = time.perf_counter()
        predict_logits(model, x, batch_size)
        torch_s.append(time.perf_counter() - t0)
        time.sleep(PAUSE)
        t0 = time.perf_counter()
        onnx_logits()
        onnx_s.append(time.perf_counter() - t0)
    a, b = statistics.median(onnx_s), statistics.median(torch_s)
    return {"model": name, "export s": round(export_s, 1), "MB": round(result.bytes / 1e6, 2),
            "check diff": f"{result.check.max_difference:.1e}", "ONNX Runtime s": round(a, 3),
            "PyTorch s": round(b, 3), "ONNX Runtime / PyTorch": f"{a / b:.2f}",
            "same class": f"{int((ours.argmax(1) == theirs.argmax(1)).sum())}/{images}"}


def main() -> None:
    p = benchmark_parser(__doc__, data_dir=False)
    p.add_argument("--models", nargs="+", default=list_models(), metavar="NAME")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    args = parse_benchmark_args(p)
    print(f"machine: {machine_description()}")
    print(f"{args.images} random images in batches of {args.batch_size}, medians of {args.repeats} alternating runs")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            r = row(name, Path(folder), args.images, args.batch_size, args.repeats)
            print(f"{name} {'done' if r else 'skipped (no default shape)'}", flush=True)
            if r:
                rows.append(r)
    print()
    print(format_table(rows))


if __name__ == "__main__":
    main()
