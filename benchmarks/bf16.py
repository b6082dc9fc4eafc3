"""bf16 autocast against fp32 on a CPU: training images/s of every zoo model and of the two presets' nets.

For each case the real ``Trainer`` trains on synthetic 28x28 images (second
epoch of two, as ``benchmarks/roofline.py``) with ``train.precision=fp32`` and
``train.precision=bf16``, interleaved over ``--rounds`` rounds; the table gives
the median images/s of each and bf16's time as a fraction of fp32's. bf16
autocast runs the convs and linear layers in bf16 (weights, optimizer and loss
stay fp32). On a CPU with bf16 instructions (AVX512-BF16, AMX) oneDNN runs them
natively; elsewhere bf16 is far slower (9-13x fp32's time with oneDNN limited to
AVX2). The machine line says "with bf16 instructions" where the CPU has them
(and "fp16 instructions" where it has AVX512-FP16 or AMX-FP16).
To see a CPU without them on one that has them, limit oneDNN and PyTorch's own
kernels to AVX2:

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 .venv/bin/python benchmarks/bf16.py --models cnn fast

``--fp16`` adds ``train.precision=fp16`` (float16 autocast with a loss scale,
for GPUs before Ampere) to each round: on a CPU without fp16 arithmetic
(AVX512-FP16 or AMX-FP16) PyTorch emulates it, and the column shows at what
cost. ``--no-presets`` leaves out the two presets' rows.

The presets' rows use their config files (configs/fast.toml, configs/best.toml:
model, batch size, optimizer, augmentation and EMA; a constant learning rate,
no validation counted); the zoo rows use each model's defaults, small models at
batch 256 and the ImageNet-shaped ones (AlexNet, VGG, ResNet on 28x28) at batch
32 and 2 steps to keep the run short.

    .venv/bin/python benchmarks/bf16.py
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from mnistlab.bench import benchmark_parser, format_table, machine_description, parse_benchmark_args, training_rate
from mnistlab.config import Config, load_config
from mnistlab.models import list_models

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BIG = {"alexnet", "resnet18", "resnet50", "vgg11", "vgg13", "vgg16", "vgg19"}


def preset_case(name: str) -> tuple[str, str, int, int, Config]:
    """(label, model, batch, steps, config) for a preset, from its config file."""
    cfg = load_config(CONFIGS / f"{name}.toml")
    return f"{name}.toml", cfg.model.name, cfg.train.batch_size, 5120 // cfg.train.batch_size, cfg


def main() -> None:
    p = benchmark_parser(__doc__, data_dir=False)
    p.add_argument("--models", nargs="*", default=[m for m in list_models() if m != "vgg"],
                   help="zoo models (vgg needs a channels list; vgg11..19 cover it)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved fp32/bf16 rounds per case")
    p.add_argument("--fp16", action="store_true", help="fp16 autocast too (emulated, and slow, on most CPUs)")
    p.add_argument("--no-presets", action="store_true", help="only the --models rows")
    args = parse_benchmark_args(p)
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    print(f"machine: {machine_description()}" + (f"; oneDNN limited to {isa} (ONEDNN_MAX_CPU_ISA)" if isa else ""))
    cases = [] if args.no_presets else [preset_case("fast"), preset_case("best")]
    cases += [(m, m, 32, 2, Config()) if m in BIG else (m, m, 256, 20, Config()) for m in args.models]
    rows = []
    for label, model, batch, steps, cfg in cases:
        rates: dict[str, list[float]] = {"fp32": [], "bf16": [], **({"fp16": []} if args.fp16 else {})}
        for _ in range(args.rounds):
            for precision in rates:
                rates[precision].append(training_rate(
                    model, batch_size=batch, steps=steps, config=cfg, overrides=[f"train.precision={precision}"]))
        fp32, bf16 = statistics.median(rates["fp32"]), statistics.median(rates["bf16"])
        row = {"case": label, "batch": batch, "fp32 images/s": round(fp32), "bf16 images/s": round(bf16),
               "bf16 time / fp32": round(fp32 / bf16, 2)}
        if args.fp16:
            fp16 = statistics.median(rates["fp16"])
            row.update({"fp16 images/s": round(fp16), "fp16 time / fp32": round(fp32 / fp16, 2)})
        rows.append(row)
        print(f"{label} done", flush=True)
    print()
    print(format_table(rows))


if __name__ == "__main__":
    main()
