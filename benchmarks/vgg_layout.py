"""Channels-last (NHWC) against NCHW for the `vgg` model's own layouts, in fp32 and bf16.

``train.channels_last = none`` (auto) picks NHWC on a CPU for the models whose
builders mark it (``channels_last_on_cpu``). The built-in vgg11-19 trained
0.95-1.05x as fast in NHWC on the first AMD EPYC (vgg19 slower; benchmarks/roofline.txt); this
script measures the small layouts people write for MNIST with ``model.name =
"vgg"``: training images/s of the real Trainer (synthetic images, second epoch
of two), each layout in both memory formats, interleaved, in two rounds.

    .venv/bin/python benchmarks/vgg_layout.py
"""

from __future__ import annotations

from mnistlab.bench import benchmark_parser, format_table, machine_description, parse_benchmark_args, training_rate
from mnistlab.machine import native_bf16

LAYOUTS = ('[32,32,"M",64,64,"M",128,128,"M"]', '[32,"M",64,"M"]', '[64,64,"M",128,128,"M",256,"M"]')  # model.channels


def main() -> None:
    p = benchmark_parser(__doc__, data_dir=False)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2)
    args = parse_benchmark_args(p)
    print(f"machine: {machine_description()}", flush=True)
    precisions = ["fp32", "bf16"] if native_bf16() else ["fp32"]
    rows = []
    for precision in precisions:
        for channels in LAYOUTS:
            name = channels.strip("[]").replace('"', "")
            rate = {"NHWC": [], "NCHW": []}
            for _ in range(args.rounds):
                for layout, cl in (("NHWC", "true"), ("NCHW", "false")):
                    rate[layout].append(training_rate("vgg", batch_size=args.batch, steps=args.steps, overrides=[
                        f"model.channels={channels}", "model.hidden=[256]", f"train.channels_last={cl}",
                        f"train.precision={precision}"]))
            nhwc, nchw = max(rate["NHWC"]), max(rate["NCHW"])
            rows.append({"layout": name, "precision": precision, "NHWC images/s": round(nhwc),
                         "NCHW images/s": round(nchw), "NHWC / NCHW": round(nhwc / nchw, 2)})
            print(f"{name} {precision} done", flush=True)
    print()
    print(format_table(rows))
    print(f"(the better of the rounds for each; images/s of training steps at batch {args.batch})")


if __name__ == "__main__":
    main()
