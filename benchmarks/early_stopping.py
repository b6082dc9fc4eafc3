"""When would each early-stopping criterion have stopped a real run?

Trains `lenet` on 2,000 MNIST images for 40 epochs (small data, so it
overfits and the validation loss turns up), then replays the recorded
per-epoch metrics through the real callbacks -- patience, Prechelt's GL, PQ
and UP -- and reports the epoch each would have stopped at, with the
validation loss there and the best one. Writes docs/early_stopping.png; the
README quotes the kept output, benchmarks/early_stopping.txt.

    .venv/bin/python benchmarks/early_stopping.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mnistlab import Config, apply_overrides, build_model, fit, load_data  # noqa: E402
from mnistlab.bench import machine_description  # noqa: E402
from mnistlab.callbacks import GL, PQ, UP, EarlyStopping  # noqa: E402


class Replay:
    """The smallest TrainerHandle: it only records the first stop request."""

    def __init__(self) -> None:
        self.stopped: tuple[int, str] | None = None
        self.epoch = 0

    def request_stop(self, reason: str) -> None:
        if self.stopped is None:
            self.stopped = (self.epoch, reason)

    def get_weights(self):
        return {}


def replay(callback, history) -> tuple[int, str] | None:
    handle = Replay()
    callback.on_train_begin(handle)
    for row in history:
        handle.epoch = int(row["epoch"])
        callback.on_epoch_end(handle.epoch, row, handle)
        if handle.stopped:
            return handle.stopped
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "early_stopping.png"))
    args = p.parse_args()

    cfg = apply_overrides(Config(), [
        f"data.dir={args.data_dir}", "data.train_limit=2000", "model.name=lenet", f"train.epochs={args.epochs}",
        "train.batch_size=64", "optimizer.lr=0.001", "optimizer.betas=[0.9, 0.999]", "schedule.name=constant",
    ])
    torch.manual_seed(0)
    data = load_data(cfg.data)
    model = build_model("lenet", mean=data.mean, std=data.std)
    history = fit(model, data, cfg).history
    best = min(history, key=lambda r: r["val_loss"])

    rules = {
        "patience:5 (val_loss)": EarlyStopping(monitor="val_loss", patience=5),
        "GL_5": GL(alpha=5),
        "GL_20": GL(alpha=20),
        "PQ_0.5 (k=5)": PQ(alpha=0.5, strip=5),
        "PQ_2 (k=5)": PQ(alpha=2, strip=5),
        "UP_2 (k=5)": UP(strips=2, strip=5),
        "UP_3 (k=5)": UP(strips=3, strip=5),
    }
    print(f"machine: {machine_description()}")  # the kept output's first line was written by hand
    print(f"lenet, 2,000 training images, {args.epochs} epochs, Adam 1e-3 constant; "
          f"lowest val_loss {best['val_loss']:.4f} at epoch {int(best['epoch'])}")
    print(f"{'criterion':<24} {'stop':>5} {'val_loss':>9} {'val_acc':>8}  reason")
    stops = {}
    for name, rule in rules.items():
        hit = replay(rule, history)
        if hit is None:
            print(f"{name:<24} {'-':>5} {'':>9} {'':>8}  never stopped in {args.epochs} epochs")
            continue
        epoch, reason = hit
        row = history[epoch - 1]
        stops[name] = epoch
        print(f"{name:<24} {epoch:>5} {row['val_loss']:>9.4f} {100 * row['val_accuracy']:>7.2f}%  {reason}")

    epochs = [int(r["epoch"]) for r in history]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(epochs, [r["val_loss"] for r in history], label="validation loss", color="C0")
    ax.plot(epochs, [r["train_loss"] for r in history], label="training loss", color="C1")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy (log scale)")
    for i, (name, epoch) in enumerate(stops.items()):
        ax.axvline(epoch, color=f"C{i + 2}", linestyle="--", linewidth=1)
        ax.text(epoch, ax.get_ylim()[1], f" {name}", rotation=90, va="top", ha="right", fontsize=7, color=f"C{i + 2}")
    ax.set_title("Where each early-stopping criterion stops (lenet, 2,000 MNIST images)")
    ax.legend(loc="lower left")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
