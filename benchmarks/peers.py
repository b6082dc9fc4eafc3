"""One training epoch of the `cnn` model: mnistlab against a plain PyTorch loop and PyTorch Lightning.

Same model (``build_model("cnn")``, same initial weights), same hyperparameters
(Adam lr 1e-3, betas 0.9/0.999, constant lr, batch 64, one epoch), same 55,000
training images (mnistlab's train split; the other two get them as a
``Subset`` of ``torchvision.datasets.MNIST`` through a ``DataLoader`` with
``ToTensor`` + ``Normalize``, ``shuffle=True``, ``num_workers=0``: worker
processes only compete for the 2 cores). Lightning runs with
``accelerator="cpu"``, no logger, no checkpointing, no progress bar, no model
summary and no validation, so it is timed on the training loop alone; its
epoch time comes from a callback (``on_train_epoch_start``/``_end``), and the
whole ``fit`` call is reported too. mnistlab runs its real ``Trainer`` with the
default fast path (in-memory batches, channels-last, fused Adam, freed memory kept
for reuse); its epoch time is the ``seconds`` of the epoch in its history
(training steps only).

Each epoch runs in a fresh Python process, as each loop would in a user's own
script: process-wide state (glibc's malloc thresholds, which mnistlab's
``train.reuse_memory`` raises, and which glibc itself raises as a process frees
big buffers; torch's thread pool) cannot carry over from one loop to the next.
Every process gets the same ``--threads`` (default: PyTorch's, all cores). The
three are interleaved (A B C A B C ...) and the table gives medians; the ratio
column divides by the plain loop's median. Test accuracy is computed by the
same ``evaluate`` for all three.

``--bf16`` adds a fourth loop: mnistlab with ``train.precision=bf16`` (bf16
autocast of the forward pass; weights, optimizer and loss stay fp32). It is an
option, not mnistlab's CPU default, measured only on a CPU with bf16
instructions (AVX512-BF16); its row is apart from the fp32 comparison.

    .venv/bin/python benchmarks/peers.py --data-dir /work/shared/data --repeats 3

Needs the ``bench`` extra: ``pip install -e '.[bench]'`` (PyTorch Lightning).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from mnistlab import Config, apply_overrides
from mnistlab.bench import benchmark_parser, format_table, machine_description, parse_benchmark_args
from mnistlab.data import load_data
from mnistlab.models import build_model
from mnistlab.training.evaluate import evaluate
from mnistlab.training.fit import Trainer

BATCH, LR = 64, 1e-3


def fresh_model(data, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn", num_classes=10, in_channels=1, image_size=(28, 28), mean=data.mean, std=data.std)


def loader(data_dir: str, indices: torch.Tensor, seed: int):
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    ds = Subset(datasets.MNIST(root=data_dir, train=True, download=False, transform=tf), indices.tolist())
    return DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=0, generator=torch.Generator().manual_seed(seed))


class PreNormalized(torch.nn.Module):
    """The zoo model normalizes [0, 1] inputs itself; the DataLoader already normalized, so undo that."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 0.3081 + 0.1307)


def run_plain(data, data_dir: str, seed: int) -> tuple[float, torch.nn.Module]:
    model = PreNormalized(fresh_model(data, seed))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    dl = loader(data_dir, data.train.indices, seed)
    model.train()
    t0 = time.perf_counter()
    for x, y in dl:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0, model.net


def run_lightning(data, data_dir: str, seed: int) -> tuple[float, float, torch.nn.Module]:
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self, net):
            super().__init__()
            self.net = PreNormalized(net)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=LR)

    class EpochTimer(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.seconds = time.perf_counter() - self.t0

    module, timer = Module(fresh_model(data, seed)), EpochTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[timer])
    dl = loader(data_dir, data.train.indices, seed)
    t0 = time.perf_counter()
    trainer.fit(module, dl)
    return timer.seconds, time.perf_counter() - t0, module.net.net


def run_mnistlab(data, seed: int, precision: str = "fp32") -> tuple[float, torch.nn.Module]:
    cfg = apply_overrides(Config(), [
        "model.name=cnn", "optimizer.name=adam", f"optimizer.lr={LR}", "optimizer.betas=[0.9, 0.999]",
        "schedule.name=constant", f"train.batch_size={BATCH}", "train.epochs=1", "train.progress=false",
        f"train.seed={seed}", "train.device=cpu", f"train.precision={precision}",
    ])
    result = Trainer(fresh_model(data, seed), data, cfg).fit()
    return result.history[0]["seconds"], result.model


RUNNERS = {"plain PyTorch (DataLoader)": "plain", "Lightning Trainer.fit": "lightning", "mnistlab Trainer": "mnistlab"}
BF16 = {"mnistlab Trainer, bf16 autocast": "mnistlab-bf16"}


def child(kind: str, data_dir: str, seed: int) -> dict[str, float]:
    """One epoch of one loop in this (fresh) process: epoch seconds, test accuracy, Lightning's whole fit()."""
    data = load_data(apply_overrides(Config(), [f"data.dir={data_dir}"]).data)
    total = None
    if kind == "plain":
        secs, model = run_plain(data, data_dir, seed)
    elif kind == "lightning":
        secs, total, model = run_lightning(data, data_dir, seed)
    else:
        secs, model = run_mnistlab(data, seed, "bf16" if kind == "mnistlab-bf16" else "fp32")
    return {"seconds": secs, "accuracy": evaluate(model, data.test).accuracy, "fit_total": total}


def in_fresh_process(kind: str, data_dir: str, seed: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", kind, "--seed", str(seed), "--data-dir", data_dir,
           "--threads", str(torch.get_num_threads())]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} run failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="also time mnistlab with train.precision=bf16")
    p.add_argument("--child", choices=sorted([*RUNNERS.values(), *BF16.values()]), help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parse_benchmark_args(p)
    if args.child:
        print(json.dumps(child(args.child, args.data_dir, args.seed)))
        return
    import lightning

    n_train = len(load_data(apply_overrides(Config(), [f"data.dir={args.data_dir}"]).data).train)
    print(f"machine: {machine_description()}; lightning {lightning.__version__}")
    print(f"cnn model, Adam {LR}, batch {BATCH}, 1 epoch of {n_train:,} images, each in a fresh process; "
          f"{args.repeats} interleaved repeats, medians\n")
    runners = {**RUNNERS, **(BF16 if args.bf16 else {})}
    times: dict[str, list[float]] = {k: [] for k in runners}
    accs: dict[str, list[float]] = {k: [] for k in runners}
    fit_totals: list[float] = []
    for r in range(args.repeats):
        for name, kind in runners.items():
            out = in_fresh_process(kind, args.data_dir, r)
            times[name].append(out["seconds"])
            accs[name].append(out["accuracy"])
            if out["fit_total"] is not None:
                fit_totals.append(out["fit_total"])
        print(f"repeat {r}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    plain = statistics.median(times["plain PyTorch (DataLoader)"])
    lit = statistics.median(times["Lightning Trainer.fit"])
    rows = [{
        "loop": k,
        "epoch s (median)": round(statistics.median(v), 2),
        "min..max s": f"{min(v):.1f}..{max(v):.1f}",
        "/ plain": round(statistics.median(v) / plain, 2),
        "/ Lightning": round(statistics.median(v) / lit, 2),
        "test acc % (mean)": round(100 * statistics.mean(accs[k]), 2),
    } for k, v in times.items()]
    print()
    print(format_table(rows))
    print(f"\nLightning's whole fit() call: median {statistics.median(fit_totals):.2f} s (setup included)")


if __name__ == "__main__":
    main()
