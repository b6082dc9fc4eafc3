"""The ``mnistlab`` command: parse, build, call. No training logic lives here."""

from __future__ import annotations

import argparse
import atexit
import codecs
import dataclasses
import io
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from . import jsonout
from .errors import CheckpointError, ConfigError, MnistlabError, leave_error, raise_signalled

_FLAG_KEYS = {
    "model": "model.name",
    "epochs": "train.epochs",
    "max_minutes": "train.max_minutes",
    "max_steps": "train.max_steps",
    "optimizer": "optimizer.name",
    "lr": "optimizer.lr",
    "batch_size": "train.batch_size",
    "seed": "train.seed",
    "device": "train.device",
    "threads": "train.threads",
    "report": "train.report",
    "dataset": "data.dataset",
    "data_dir": "data.dir",
    "init_from": "finetune.init_from",
    "unfreeze_at": "finetune.unfreeze_at",
}


def _add_data_dir(p: argparse.ArgumentParser, stored: bool = False) -> None:
    default = ("the data folder the checkpoint's run used, else $MNISTLAB_DATA, else the user's cache folder"
               if stored else "$MNISTLAB_DATA, else the user's cache folder")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help=f"dataset folder (default: {default}); "
        "MNIST is looked for in DIR/MNIST/raw (Fashion-MNIST in DIR/FashionMNIST/raw, KMNIST in DIR/KMNIST/raw)",
    )


def _add_config_args(p: argparse.ArgumentParser) -> None:
    """The flags that make a training config, shared by `train` and `lr-find`."""
    p.add_argument("--config", metavar="FILE", help="TOML config file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.batch_size=128, or --set "
                   "train.grad_checkpoint=true to recompute the conv layers' activations in the backward pass "
                   "instead of storing them (less memory, more time; same results) (repeatable)")
    p.add_argument("--model", help="model name (see `mnistlab models`)")
    p.add_argument("--optimizer", help="sgd, adam, adamw, nadam, adamax, rmsprop, adadelta or adagrad")
    p.add_argument("--batch-size", type=int, help="training batch size")
    p.add_argument("--seed", type=int, help="random seed (weights, shuffling, dropout)")
    p.add_argument("--device", help="auto, cpu, cuda or mps")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    p.add_argument("--dataset", help="mnist, fashion-mnist or kmnist")
    _add_data_dir(p)
    p.add_argument("--init-from", metavar="CKPT",
                   help="start from the weights of another run: a .ckpt file or a run folder (its best.ckpt). "
                   "Without --config, the model and its options are the checkpoint's (flags and --set still change "
                   "them). The output layer is replaced, freshly initialized, when the class count differs; the "
                   "input normalization is the new data's")
    p.add_argument("--freeze", metavar="PATTERNS",
                   help="keep these parameters fixed (out of the optimizer): names, module prefixes or globs, "
                   "separated by commas or spaces, e.g. 'features' or 'features.0.*, classifier.1'. Frozen batch "
                   "norm layers run in inference mode (their statistics do not move)")


def _torch_version() -> str:
    """torch's version from its metadata: importing torch for --version would take seconds."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "not installed"


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, as mnistlab's own are (argparse printed its usage block first), and
    negative numbers in exponent form taken as values: argparse's own pattern (-1, -0.5) read `--lr -1e-3` as a
    flag, "--lr: expected one argument", where -0.001 reached the config's "must be greater than zero"."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mnistlab",
        description="Train, compare and use convolutional networks on MNIST, Fashion-MNIST and KMNIST.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"mnistlab {__version__} (torch {_torch_version()})",
                        help="print the versions of mnistlab and torch, and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train a model (default: the two-epoch recipe of the fast model on MNIST)",
        description="Train a model into a run folder holding config.toml, metrics.csv, summary.json, "
        "best.ckpt, last.ckpt, the [checkpoint] files, TensorBoard logs, test_predictions.npz, report.html "
        "and plots/ (ema.ckpt with [ema]). Settings come from the defaults, then --config, "
        "then the flags, then --set, later ones winning.",
    )
    _add_config_args(t)
    t.add_argument("--epochs", type=int,
                   help="number of epochs (with --resume: the total to reach, not that many more)")
    t.add_argument("--max-minutes", type=float, metavar="MIN",
                   help="stop before an epoch that could take the training time past MIN minutes (judged by the "
                   "longest epoch so far; validation and checkpoints not counted); the schedule still spans --epochs "
                   "(or --max-steps)")
    t.add_argument("--max-steps", type=int, metavar="N",
                   help="stop after N optimizer steps in all, in mid-epoch if need be (that epoch is validated and "
                   "recorded like the others); the schedule is planned over the steps --epochs and N allow")
    t.add_argument("--lr", type=float, help="peak learning rate (`mnistlab lr-find` suggests one)")
    t.add_argument("--early-stopping", metavar="SPEC",
                   help="none, patience:N, gl:ALPHA, pq:ALPHA or up:S (Prechelt's criteria; strip length "
                        "with --set early_stopping.strip=K)")
    t.add_argument("--unfreeze-at", type=int, metavar="EPOCH",
                   help="train the --freeze parameters too from the start of this epoch (a new optimizer group)")
    t.add_argument("--out", metavar="DIR", help="run folder (default: runs/<date>-<time>-<model>)")
    t.add_argument("--resume", metavar="RUN", help="continue the run in this folder (or its last.ckpt) from its "
                   "last.ckpt; flags and --set change the stored config (e.g. --epochs to train further)")
    t.add_argument("--no-report", dest="report", action="store_const", const=False,
                   help="leave out report.html and plots/ (seconds of plotting; `mnistlab report RUN` writes them "
                   "later): --set train.report=false")
    t.add_argument("--quiet", action="store_true", help="print nothing but errors, warnings and how to resume "
                   "an interrupted run")
    t.add_argument("--nproc", type=int, metavar="N",
                   help="train in N processes on this machine with DistributedDataParallel (gloo on the CPU, one "
                   "GPU each with NCCL): runs `torchrun --standalone --nproc_per_node N -m mnistlab train ...`. "
                   "--batch-size stays the global batch (a multiple of N); on the CPU, N is at most the cores. "
                   "1: a plain single process. Linux or macOS only")

    lf = sub.add_parser(
        "lr-find", help="suggest a learning rate (range test)",
        description="Learning-rate range test (Smith 2017, as fastai's and Lightning's lr_find): from the weights "
        "`mnistlab train` would start from, with its config, --set and model/data/optimizer flags (not --lr, "
        "--epochs or the other flags of a whole run), the learning rate grows exponentially "
        "from --min-lr to --max-lr over --steps training steps, until the loss climbs to 4x its lowest (smoothed) "
        "value. Prints the loss against the rate, suggests the rate of steepest descent, and plots the curve. The "
        "config's schedule is ignored during the test; nothing else is written.")
    _add_config_args(lf)
    lf.add_argument("--min-lr", type=float, default=1e-7, metavar="LR", help="first rate (default 1e-7)")
    lf.add_argument("--max-lr", type=float, default=10.0, metavar="LR", help="last rate (default 10)")
    lf.add_argument("--steps", type=int, default=100, metavar="N",
                    help="training steps at most (default 100; 2 to 100,000; a suggestion needs 14 or more)")
    lf.add_argument("--plot", metavar="FILE", default="lr_find.png", help="where to write the plot "
                    "(default lr_find.png)")
    lf.add_argument("--json", action="store_true", help="print every step's rate and loss as JSON")
    lf.set_defaults(epochs=None, max_minutes=None, max_steps=None, lr=None, unfreeze_at=None, early_stopping=None,
                    resume=None, report=None)

    e = sub.add_parser("evaluate", help="test a checkpoint", description="Evaluate a checkpoint (or a run folder's "
                       "best.ckpt) on the test split: loss, accuracy, each class's accuracy (recall), precision and "
                       "F1, confusion matrix and the first ten predictions.")
    e.add_argument("checkpoint", help="a .ckpt file or a run folder")
    _add_data_dir(e, stored=True)
    e.add_argument("--device", default="cpu", choices=("cpu", "auto", "cuda", "mps"),
                   help="where the model runs: cpu (default), auto, cuda or mps (a GPU scores the big models in "
                   "seconds, where a CPU takes minutes)")
    e.add_argument("--json", action="store_true", help="print JSON instead of text")

    m = sub.add_parser("models", help="list the model zoo", description="List every registered model with its "
                       "parameters, multiply-accumulates per image, input size and the [model] options it takes; "
                       "--details prints one model's layer table.")
    m.add_argument("--dataset", help="size the models for this dataset's images (default: that of --config, else "
                   "mnist)")
    m.add_argument("--details", metavar="NAME", nargs="?", const=True,  # True: no NAME; "" is refused
                   help="print the layer table of one model (no NAME: the config's model, else fast, the default of "
                   "`mnistlab train`)")
    m.add_argument("--config", metavar="FILE", help="with --details: build the model with this config's [model] "
                   "options, e.g. configs/fast.toml (default: the model's own defaults)")
    m.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="with --details: override a model option, e.g. --set model.crop=2 (repeatable)")

    pr = sub.add_parser(
        "predict", help="classify your own images",
        description="Classify image files (PNG, JPEG, BMP, GIF (its first frame), ...; up to 50 megapixels; dark "
        "ink on light paper or light on dark) with a trained model. Each image is preprocessed the way the "
        "model's dataset was made: grayscale, inverted if the ink is darker than the background, cropped to the "
        "ink, then for MNIST and KMNIST scaled into a 20x20 box and centred by its centre of mass in 28x28 (for "
        "Fashion-MNIST: its longer side scaled to 28 and its box centred). A file that cannot be read gets an "
        "error line and the others are still classified; the exit status is then 1.")
    pr.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="a run folder (its best.ckpt) or a .ckpt file")
    pr.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    pr.add_argument("--top-k", type=int, default=3, metavar="K", help="how many classes to list (default 3)")
    pr.add_argument("--json", action="store_true", help="print a JSON list with one object per file")
    pr.add_argument("--save-preprocessed", metavar="DIR",
                    help="write the 28x28 input of each image there as PNG, named after the image; "
                    "an existing file is never overwritten (the name gets -2, -3, ...)")

    ex = sub.add_parser(
        "export", help="write a model as ONNX, to run it without PyTorch",
        description="Write a checkpoint's model (a run folder: its best.ckpt; a weight average: its ema.ckpt) as "
        "an ONNX file, which ONNX Runtime runs without PyTorch or mnistlab (from Python, C++, C#, Java, or "
        "JavaScript in a browser). Its input 'images' is float32 [batch, 1, 28, 28] with pixels in [0, 1], light on "
        "a dark background as in the dataset (the model normalizes them itself; the batch size is free); its "
        "outputs are 'logits' and "
        "'probabilities' (their softmax). The class names are in the file's metadata. Before the file is written, "
        "ONNX Runtime runs it on random images and its logits are compared with PyTorch's; a file that differs is "
        "not written. Needs mnistlab[export].")
    ex.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="a run folder (its best.ckpt) or a .ckpt file")
    ex.add_argument("--out", metavar="FILE", help="the ONNX file to write (default: beside the checkpoint, "
                    "best.ckpt -> best.onnx); folders on the way are made; an existing file is replaced only if "
                    "it is an ONNX model or empty")
    ex.add_argument("--no-check", dest="check", action="store_false",
                    help="write without running the file in ONNX Runtime first")
    ex.add_argument("--json", action="store_true", help="print what was written as JSON")

    r = sub.add_parser("report", help="write a run's report.html",
                       description="Write report.html (self-contained, images embedded) and its PNGs under plots/ "
                       "from the files of a run folder alone: curves, confusion matrix, per-class accuracy, worst "
                       "misclassified test images, config and summary. Runs write it themselves when they end.")
    r.add_argument("run", metavar="RUN", help="a run folder")
    r.add_argument("--out", metavar="DIR", help="write into DIR instead of the run folder")

    c = sub.add_parser("compare", help="compare runs: accuracy against training time",
                       description="Print a table of runs (model, parameters, epochs, training seconds, best "
                       "validation accuracy (the tested epoch's; for an unfinished run, that of the epoch best.ckpt "
                       "holds so far), test accuracy, stop reason; the machine, the precision or the dataset too "
                       "when the runs differ in it), best test accuracy first (within each dataset), and plot test "
                       "accuracy against training time. Reads only the run folders.")
    c.add_argument("runs", metavar="RUN", nargs="+", help="run folders, or folders holding run folders")
    c.add_argument("--plot", metavar="FILE", default="compare.png",
                   help="where to write the plot (default compare.png)")
    c.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")

    en = sub.add_parser("ensemble", help="test the average of several models",
                        description="Average the softmax outputs of several trained models on the test split of "
                        "their dataset, and print the test accuracy of each member and of the ensemble. A run folder "
                        "stands for its best.ckpt (ema.ckpt with --ema). All members must share one dataset, and "
                        "each must be another model: a file given twice, or two files of the same weights, is "
                        "refused. The ensemble's test_loss (--json) is the cross-entropy of the averaged "
                        "probabilities, without label smoothing (the members may have trained with different).")
    en.add_argument("runs", metavar="RUN_OR_CKPT", nargs="+", help="run folders or .ckpt files")
    en.add_argument("--ema", action="store_true", help="use each run's weight average (ema.ckpt)")
    en.add_argument("--tta", type=int, default=0, metavar="PIXELS",
                    help="test-time augmentation: average over the image and its shifts of 1 to PIXELS pixels "
                         "left, right, up and down (default 0: off)")
    en.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_data_dir(en, stored=True)

    bn = sub.add_parser("bench", help="measure training and evaluation speed on this machine",
                        description="Time a recipe to accuracy against the public recipe (same run, interleaved; "
                        "the ratio is the number to read on a shared machine), the training rate of models against "
                        "the machine's fp32 matmul rate, and the evaluation of the test split. The full versions "
                        "are the scripts in benchmarks/.")
    bn.add_argument("--config", metavar="FILE", help="the recipe to time, e.g. configs/fast.toml (default: the "
                    "default recipe of `mnistlab train`)")
    bn.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override any config key (repeatable)")
    _add_data_dir(bn)
    bn.add_argument("--seeds", type=int, default=1, help="how many seeds the time-to-accuracy runs take, in a row "
                    "from train.seed (default 1)")
    bn.add_argument("--models", nargs="+", default=["cnn", "fast"], metavar="NAME",
                    help="models of the training-rate table (default: cnn fast)")
    bn.add_argument("--steps", type=int, default=20, help="timed training steps per model (default 20)")
    bn.add_argument("--rounds", type=int, default=3, help="measurements of each model's training rate; the table "
                    "gives the median fraction and their range (default 3: one is at the mercy of the load)")
    bn.add_argument("--train-limit", type=int, metavar="N", help="time to accuracy on N of the training images "
                    "only, a seeded random subset (a quick smoke run, not a measurement)")
    sw = sub.add_parser("sweep", help="search hyperparameters (needs mnistlab[tune])",
                        description="Run a hyperparameter search over any config keys: the file is a config (the "
                        "base of every trial) plus [sweep] and [sweep.params] (see configs/sweep-example.toml). Each "
                        "trial trains into DIR/trial-NNNN/; DIR also gets study.db, results.csv, best.toml and "
                        "objective.png. Ctrl-C keeps finished trials; the same command with the same --out continues "
                        "the study.")
    sw.add_argument("config", metavar="CONFIG", help="sweep file (TOML)")
    sw.add_argument("--out", metavar="DIR", help="sweep folder (default: sweeps/<date>-<time>-<name>)")
    sw.add_argument("--trials", type=int, metavar="N",
                    help="trials in all (complete or pruned), over reruns and workers (default: [sweep] trials, else "
                    "20, or the number of combinations of a finite space where fewer; a grid: all of them)")
    sw.add_argument("--workers", type=int, metavar="N",
                    help="processes sharing the study (default 1; at most one per trial and per CPU core)")
    sw.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: sqlite:///DIR/study.db)")
    _add_data_dir(sw)
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the base config (repeatable)")
    sw.add_argument("--quiet", action="store_true", help="print only the final table and errors")
    sw.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set on the extra processes a sweep starts
    parser.commands = sub.choices  # each command's parser, by name: main() reports a flag it does not take
    return parser


def _needs(flag: str, value: str | None, what: str) -> None:
    """``{flag} needs {what}`` for an empty value (`--out ""`, `"$UNSET"`), which is an error, not the flag left
    out: ``Path("")`` is the current folder (a run, report or sweep written among its files), and ``""`` read as
    false took the default (the default recipe timed, the default config shown)."""
    if value is not None and not value.strip():
        raise MnistlabError(f"{flag} needs {what}")


def _train_config(args: argparse.Namespace):
    from .callbacks import parse_early_stopping
    from dataclasses import replace

    from .config import Config, Overrides, apply_overrides, load_config, parse_overrides
    from .training.checkpoint import read_checkpoint, resume_file, stored_config
    from .training.finetune import read_init_checkpoint, split_patterns

    # --resume "" resumed the current folder, with the default config in place of the run's
    _needs("--resume", getattr(args, "resume", None), "a run folder or its last.ckpt; leave it out to start a new run")
    _needs("--config", args.config, "a TOML file; leave it out for the default settings")
    _needs("--early-stopping", getattr(args, "early_stopping", None),
           "none, patience:N, gl:ALPHA, pq:ALPHA or up:S; leave it out for the config's [early_stopping]")
    sets = parse_overrides(args.overrides)
    # --set finetune.init_from is --init-from: the same rules apply to it, and given both, --set wins as for any
    # key. (The model was built as the flag's checkpoint describes it, but the weights came from --set's: with
    # another architecture the run failed, saying to do what the CLI claims to do without --config.)
    init_from = sets.get("finetune.init_from") if "finetune.init_from" in sets else args.init_from
    if init_from is not None and not isinstance(init_from, str):
        # A run folder named 2024, which TOML reads as a number: the text as typed, as apply_overrides takes it.
        init_from = sets.texts["finetune.init_from"]
    if args.resume:
        if args.init_from:
            raise MnistlabError("--init-from cannot be combined with --resume: a resumed run continues from its "
                                "own last.ckpt")
        if args.config:
            raise MnistlabError("--config cannot be combined with --resume: the run's stored config is used; "
                                "change it with flags or --set")
        if args.out is not None:
            raise MnistlabError("--out cannot be combined with --resume: a resumed run continues in its own folder")
        run = Path(args.resume)
        payload = read_checkpoint(resume_file(run))
        cfg = stored_config(payload, resume_file(run))
        given, stored = (os.path.abspath(os.path.expanduser(v)) if isinstance(v, str) else v
                         for v in (init_from, cfg.finetune.init_from))
        if "finetune.init_from" in sets and given != stored:  # a start point it never used
            raise MnistlabError(f"finetune.init_from cannot be changed on --resume (the run started from "
                                f"{cfg.finetune.init_from or 'new weights'}): a resumed run continues from its own "
                                "last.ckpt")
    elif args.config:
        cfg = load_config(args.config)
    elif isinstance(init_from, str) and init_from.strip():  # fine-tune the checkpoint's architecture unless told
        payload = read_init_checkpoint(init_from)[1]
        cfg = replace(Config(), model=stored_config(payload, init_from).model)
    else:
        cfg = Config()
    flags: dict[str, Any] = {
        key: getattr(args, name) for name, key in _FLAG_KEYS.items() if getattr(args, name) is not None
    }
    if args.freeze is not None:
        patterns = split_patterns(args.freeze)
        if not patterns:
            raise MnistlabError(f"--freeze {args.freeze!r} names no parameters; give names, prefixes or globs "
                                "such as 'features' or 'features.0.*'")
        flags["finetune.freeze"] = list(patterns)
    if args.early_stopping:
        flags.update(parse_early_stopping(args.early_stopping))
    # One call, flags first and --set after (a later key wins), so that keys checked together
    # (--freeze with --unfreeze-at or --set finetune.unfreeze_at=...) may come from either.
    return apply_overrides(cfg, Overrides({**flags, **sets}, sets.texts))


def _without_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (or an abbreviation, which argparse accepts).

    torchrun must not see it: its own parser takes ``--nproc`` for an ambiguous ``--nproc_per_node``.

    >>> _without_nproc(["train", "--nproc", "2", "--epochs", "3", "--npr=2"])
    ['train', '--epochs', '3']
    """
    out, skip = [], False
    for arg in argv:
        name = arg.split("=", 1)[0]
        if skip:
            skip = False
        elif len(name) > 2 and "--nproc".startswith(name):
            skip = "=" not in arg  # the value is the next word
        else:
            out.append(arg)
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.fit import TrainingInterrupted
    from .training.run import callback_messages, train

    from .training import distributed

    _needs("--out", args.out, "a folder name; leave it out for runs/<date>-<time>-<model>")
    cfg = _train_config(args)  # before launching: a bad setting is one error line, not one per process
    if args.nproc is not None:
        if args.nproc < 1:
            raise ConfigError(f"--nproc must be at least 1, got {args.nproc}")
        if not distributed.launched_by_torchrun() and args.nproc > 1:
            from .training.fit import resolve_device

            device = resolve_device(cfg.train.device)
            distributed.check_processes(args.nproc, device, cfg.train.batch_size)
            distributed.check_sync_batchnorm(cfg.train.sync_batchnorm, device)
            return distributed.launch(args.nproc, _without_nproc(args.argv), run=args.resume or args.out)
        # Given to torchrun by hand, it must agree with torchrun.
        here = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        if args.nproc != here:
            raise ConfigError(f"--nproc {args.nproc} but torchrun started {here} processes on this machine; "
                              "give one of --nproc and torchrun's --nproc_per_node")
    quiet = args.quiet or not distributed.is_main()  # the other ranks print nothing
    try:
        # Callbacks report learning-rate changes and restored weights on the "mnistlab" logger: on stdout,
        # whatever logging is set up (on rank 0 alone: see callback_messages).
        with callback_messages(not quiet, always=True):
            train(cfg, out=args.out, resume=args.resume, quiet=quiet)
    except TrainingInterrupted as e:
        if e.advice:  # rank 0 of a --nproc run, or a run of one process
            # On stderr, and even with --quiet: the user pressed Ctrl-C and needs to know how to go on. After a
            # newline where a progress bar may have been cut short on the terminal, not before every message.
            bar = not quiet and cfg.train.progress and sys.stdout is not None and sys.stdout.isatty()
            print(("\n" if bar else "") + e.advice, file=sys.stderr, flush=True)
        return e.exit_code
    return 0


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from .report.plots import check_plot_path, lr_find_png, save_png
    from .training.fit import TrainingInterrupted, emulated_precision, resolve_device, resolve_precision
    from .training.lr_find import check_settings, lr_range_test

    cfg = _train_config(args)
    check_settings(args.min_lr, args.max_lr, args.steps)
    args.plot = check_plot_path(args.plot)
    device = resolve_device(cfg.train.device)
    slow = emulated_precision(resolve_precision(cfg.train.precision, device), device)
    if slow:  # before the test, which it slows down
        print(f"mnistlab lr-find: warning: {slow}", file=sys.stderr)
    try:
        result = lr_range_test(cfg, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps)
    except TrainingInterrupted as e:
        print(f"mnistlab lr-find: interrupted by {e}; nothing was written", file=sys.stderr)
        return e.exit_code
    png = lr_find_png(result.lrs, result.losses, result.smoothed, suggestion=result.suggestion, lowest=result.lowest)
    plot = save_png(png, args.plot)
    if args.json:
        print(jsonout.dumps({**result.to_dict(), "no_suggestion": result.why_no_suggestion(args.steps),
                             "plot": str(plot)}, indent=2))
        return 0
    print(f"learning-rate range test: {cfg.model.name} on {cfg.data.dataset}, {cfg.optimizer.name}, batch "
          f"{cfg.train.batch_size}, " + (f"{result.precision} autocast, " if result.precision != "fp32" else "")
          + f"{args.min_lr:g} to {args.max_lr:g} over {args.steps} steps")
    print(f"{'step':>5}  {'lr':>8}  {'loss':>7}  {'average':>7}")
    every = max(1, len(result.lrs) // 20)
    for i in sorted({*range(0, len(result.lrs), every), len(result.lrs) - 1} - {-1}):
        print(f"{i + 1:>5}  {result.lrs[i]:8.1e}  {result.losses[i]:7.4f}  {result.smoothed[i]:7.4f}")
    print(f"stopped: {result.stop_reason}")
    why_none = result.why_no_suggestion(args.steps)
    if why_none is not None:
        print(f"no suggestion: {why_none}")
    else:
        print(f"suggested learning rate: {result.suggestion:.1e} (steepest descent of the average loss); the "
              f"lowest average came at {result.lowest:.1e}, an upper bound. Train with --lr {result.suggestion:.1e}")
        if cfg.schedule.name == "constant":
            print(f"with a constant rate, 0.3x the suggestion ({0.3 * result.suggestion:.1e}) trained best for both "
                  "constant-rate recipes in benchmarks/lr_find.txt; the suggestion itself did for the one-cycle one")
    print(f"plot: {plot}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import load_test
    from .training.allocator import reuse_freed_memory
    from .training.checkpoint import (
        check_fits_data,
        checkpoint_file,
        model_from_checkpoint,
        read_checkpoint,
        stored_config,
    )
    from .training.display import Display
    from .training.evaluate import evaluate, stored_data
    from .training.fit import resolve_device

    device = resolve_device(args.device, "--device")  # before the file is read: a missing "cuda" is one line
    file = checkpoint_file(args.checkpoint)
    payload = read_checkpoint(file)
    cfg = stored_config(payload, file)
    if cfg.train.reuse_memory:  # as the run's final test had it: the passes reuse their buffers (training/allocator.py)
        reuse_freed_memory()
    data = load_test(stored_data(cfg.data, args.data_dir))  # the test files alone: the model holds its normalization
    check_fits_data(payload, data, file)
    model = model_from_checkpoint(payload).to(device)  # evaluate() sends the batches where the model is
    display = Display()  # a progress bar on a terminal: the big models take minutes on a CPU
    result = evaluate(model, data.test, cfg.train.eval_batch_size, data.num_classes,
                      label_smoothing=cfg.train.label_smoothing,
                      progress=display.evaluation_progress(f"testing {file.name}"))
    display.clear()  # the bar goes before the result is printed
    epoch, batch = payload.get("epoch"), payload.get("batch")
    inside = isinstance(epoch, int) and isinstance(batch, int) and not isinstance(batch, bool) and batch > 0
    report = {"checkpoint": str(file), "model": payload["model_name"],
              "dataset": data.dataset,  # the text says "on fashion-mnist test"; the JSON said nothing of it
              "epoch": epoch,  # a file from the save_checkpoint API may not record one
              # a last.ckpt saved inside an epoch (Ctrl-C): the batches of the next one it had done; "epoch": 0
              # alone misled as the text once did
              "batch": batch if inside else None,
              **result.to_dict(list(data.classes))}
    if args.json:
        print(jsonout.dumps(report, indent=2))
        return 0
    if inside:
        epoch = f" (inside epoch {epoch + 1}, after batch {batch})"  # a last.ckpt saved mid-epoch: "epoch 0" misled
    else:
        epoch = "" if epoch is None else f" (epoch {epoch})"
    print(f"{report['model']} from {report['checkpoint']}{epoch} on {data.dataset} test, "
          f"{report['examples']:,} images")
    if not result.finite:  # its predictions would be argmaxes of NaN (class 0): none are shown
        print("no test accuracy, confusion matrix or predictions: the model's outputs are not finite (NaN or "
              "infinite logits: weights that diverged, or too large for float32 arithmetic)")
        return 0
    print(f"test loss {result.loss:.4f}   test accuracy {100 * result.accuracy:.2f}%")
    # recall is the class's accuracy; precision, how many of the images predicted as it are it
    print("\nper-class accuracy (recall), precision and F1:")
    name = max(len(n) for n in [*report["per_class"], "class"])  # a digit, or Fashion-MNIST's "T-shirt/top"
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    print(f"  {'class':>{name}}  {'recall':>7}  {'precision':>9}  {'F1':>7}  {'images':>6}")
    for n, m in report["per_class"].items():
        print(f"  {n:>{name}}  {pct(m['recall']):>7}  {pct(m['precision']):>9}  {pct(m['f1']):>7}  {m['images']:>6,}")
    avg = report["macro_average"]
    print(f"  {'mean':>{name}}  {pct(avg['recall']):>7}  {pct(avg['precision']):>9}  {pct(avg['f1']):>7}  "
          f"{report['examples']:>6,}")
    # Rows named where the names are not the indices (Fashion-MNIST's, KMNIST's): the reader matched 0-9
    # against the table above; the columns keep the indices, which the row names begin with.
    named = [str(n) for n in data.classes] != [str(i) for i in range(len(data.classes))]
    rows = [f"{i} {n}" if named else str(i) for i, n in enumerate(data.classes)]
    lead = max(4, *(len(r) + 1 for r in rows))
    print("\nconfusion matrix (rows: true class, columns: predicted" + (", by number" if named else "") + "):")
    width = max(5, len(str(int(result.confusion.max()))) + 1)
    print(" " * lead + "".join(f"{i:>{width}}" for i in range(len(data.classes))))
    for label, row in zip(rows, result.confusion.tolist()):
        print(f"{label:>{lead}}" if not named else f"{label:<{lead}}", end="")
        print("".join(f"{v:>{width}}" for v in row))
    print("\nfirst predictions:")
    first = report["first_predictions"]
    # as wide as the longest name printed: a digit, or Fashion-MNIST's "T-shirt/top"
    name = max((len(data.classes[p[k]]) for p in first for k in ("label", "predicted")), default=0)
    for p in first:
        mark = "" if p["label"] == p["predicted"] else "   <- wrong"
        print(f"  #{p['index']:<3} label {data.classes[p['label']]:>{name}}  "
              f"predicted {data.classes[p['predicted']]:>{name}}{mark}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .config import Config, apply_overrides, load_config
    from .data.datasets import DATASETS
    from .models import build_model, list_models, model_options
    from .models.summary import count_macs, count_parameters, format_layer_table, layer_table

    if args.dataset is not None and args.dataset not in DATASETS:
        raise MnistlabError(f"unknown dataset {args.dataset!r}; choose one of: {', '.join(DATASETS)}")
    size = (1, 28, 28)  # every dataset of the family has 28x28 grayscale images
    kwargs = dict(num_classes=10, in_channels=size[0], image_size=size[1:])
    if args.details is None and (args.config is not None or args.overrides):
        raise MnistlabError("--config and --set choose the options of the model --details shows; add --details")
    if args.details is not None:
        _needs("--config", args.config, "a TOML file; leave it out for the model's own defaults")
        cfg = load_config(args.config) if args.config is not None else Config()
        if isinstance(args.details, str):  # `--details "$UNSET"` showed fast
            _needs("--details", args.details, "a model name; leave NAME out for the config's model, else fast")
        if args.details is not True:  # a name given wins over the config's, as with `train --config F --model NAME`
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=args.details))
        cfg = apply_overrides(cfg, args.overrides)
        others = [o.partition("=")[0].strip() for o in args.overrides if not o.lstrip().startswith("model.")]
        if others:  # checked, then ignored: `--set train.epochs=3` looked as if it had done something
            raise MnistlabError(f"--set {others[0]}: --details shows the model, which only [model] options change "
                                "(use --dataset for the dataset)")
        model = build_model(cfg.model.name, **kwargs, **cfg.model.options())
        shape = f"{'x'.join(map(str, size))} ({args.dataset or cfg.data.dataset})"  # the config's: it said mnist
        if model.crop:
            shape += f", cropped to {size[0]}x{size[1] - 2 * model.crop}x{size[2] - 2 * model.crop} by crop = {model.crop}"
        print(f"model {cfg.model.name}: input {shape}, {kwargs['num_classes']} classes")
        print(format_layer_table(layer_table(model)))
        return 0
    print(f"{'model':<10} {'parameters':>12} {'MACs/image':>14}  {'input':<9} options")
    for name in list_models():
        opts = {"channels": [32, "M", 64, "M"]} if name == "vgg" else {}
        model = build_model(name, **kwargs, **opts)
        note = " (example list)" if opts else ""
        print(f"{name:<10} {count_parameters(model):>12,} {count_macs(model):>14,}  "
              f"{'x'.join(map(str, size)):<9} {', '.join(model_options(name))}{note}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import format_prediction, predict_files, printable
    from .training.checkpoint import load_model

    for image in args.images:  # `predict RUN "$UNSET"` said ". is a folder, not an image file", with exit status 1
        _needs("IMAGE", image, "an image file, got an empty name")
    try:
        model = load_model(args.checkpoint)
    except CheckpointError as e:
        # `predict seven.png runs/x`: the image was read as the checkpoint, and the error said no more than that
        if any(_is_checkpoint_path(a) for a in args.images):
            raise CheckpointError(f"{e} (the checkpoint or run folder comes first: mnistlab predict RUN IMAGE...)") \
                from None
        raise
    results = predict_files(model, args.images, top_k=args.top_k, save_preprocessed=args.save_preprocessed)
    for p in results:
        if p.error is not None:
            print(f"mnistlab predict: error: {printable(p.error)}", file=sys.stderr)  # names as stdout has them
    if args.json:
        print(jsonout.dumps([p.to_dict() for p in results], indent=2))
    else:
        for p in results:
            if p.error is None:
                print(format_prediction(p))
    return 1 if any(p.error is not None for p in results) else 0


def _is_checkpoint_path(text: str) -> bool:
    """A .ckpt file or a folder holding a best.ckpt (a run folder), as ``predict``'s first argument would be."""
    path = Path(text)
    return (path.suffix == ".ckpt" and path.is_file()) or (path / "best.ckpt").is_file()


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_checkpoint, format_export

    _needs("--out", args.out, "a file name; leave it out to write beside the checkpoint")
    try:  # ONNX Runtime's process-wide logger warns on stderr of things that are not the export's (telemetry)
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
    except ImportError:
        pass  # export_checkpoint says what to install
    result = export_checkpoint(args.checkpoint, out=args.out, check=args.check)
    print(jsonout.dumps(result.to_dict(), indent=2) if args.json else format_export(result))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    _needs("RUN", args.run, "a run folder, got an empty name")
    _needs("--out", args.out, "a folder name; leave it out to write into the run folder")
    report = write_report(args.run, out=args.out)
    print(f"wrote {report.path} ({len(report.images)} figure{'s' * (len(report.images) != 1)})")
    for note in report.missing:
        print(f"  not in the report: {note}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .report import compare_runs, format_table, write_compare_plot
    from .report.plots import check_plot_path

    for run in args.runs:  # (it compared the runs found in the current folder)
        _needs("RUN", run, "a run folder or a folder holding run folders, got an empty name")
    args.plot = check_plot_path(args.plot)
    rows = compare_runs(args.runs)
    plot = write_compare_plot(rows, args.plot)
    if args.json:
        print(jsonout.dumps([r.to_dict() for r in rows], indent=2))
        # on stderr, so stdout stays one JSON document: the plot was written without a word
        print(f"plot of test accuracy against training time: {plot}", file=sys.stderr)
    else:
        print(format_table(rows))
        print(f"\nplot of test accuracy against training time: {plot}")
    return 0


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from .training.display import Display
    from .training.ensemble import evaluate_ensemble, format_ensemble

    if args.tta < 0:
        raise ConfigError(f"--tta must be zero or more pixels, got {args.tta}")
    display = Display()  # a progress bar on a terminal: the big models take minutes on a CPU
    result = evaluate_ensemble(args.runs, ema=args.ema, data_dir=args.data_dir, tta_shift=args.tta,
                               progress=display.evaluating)
    display.clear()
    print(jsonout.dumps(result.to_dict(), indent=2) if args.json else format_ensemble(result))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench
    from .config import Config, apply_overrides, load_config
    from .models import build_model
    from .training.fit import TrainingInterrupted

    for flag, value in (("--seeds", args.seeds), ("--steps", args.steps), ("--rounds", args.rounds),
                        ("--train-limit", args.train_limit)):
        if value is not None and value < 1:
            raise MnistlabError(f"{flag} must be at least 1, got {value}")
    for name in args.models:
        # An unknown model, or one with no default shape (vgg needs a layout), fails now, not after the
        # time-to-accuracy runs: the training-rate table builds each model with its own defaults.
        try:
            build_model(name)
        except ConfigError as e:
            raise ConfigError(f"--models {name}: {e} (the training-rate table uses each model's defaults)") from None
    # An empty --config or --data-dir (a shell variable that was not set) is an error, as in `train`: it was taken
    # for the flag left out, and the default recipe or data folder was timed without a word.
    _needs("--config", args.config, "a TOML file; leave it out for the default recipe of `mnistlab train`")
    cfg = load_config(args.config) if args.config is not None else Config()
    if args.data_dir is not None:  # as a value, not "data.dir=...": that would read a folder named 2024 as a number
        cfg = apply_overrides(cfg, {"data.dir": args.data_dir})  # "" is refused there
    cfg = apply_overrides(cfg, args.overrides)
    try:
        run_bench(cfg, seeds=args.seeds, models=args.models, steps=args.steps, rounds=args.rounds,
                  train_limit=args.train_limit)
    except TrainingInterrupted as e:  # in a timed run: it stopped at the end of a step; its folder is gone
        return _interrupted("bench", e.signum)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import SweepInterrupted, format_table, load_sweep, run_sweep

    _needs("--out", args.out, "a folder name (the sweep folder), got an empty one")
    # --worker I is the hidden flag of the extra processes a sweep starts (always with --out and --workers N,
    # 1 <= I < N). Typed by hand, as `--worker 4` for --workers 4, it ran the sweep as a silent extra process:
    # no table, results.csv, best.toml or objective.png, and exit status 0.
    if args.worker is not None and (args.out is None or args.workers is None or not 1 <= args.worker < args.workers):
        raise ConfigError(f"--worker {args.worker} is for the processes a sweep starts itself; to run the sweep in "
                          "several processes, give --workers N")
    spec = load_sweep(args.config, overrides=args.overrides, data_dir=args.data_dir, trials=args.trials,
                      workers=args.workers, storage=args.storage)
    try:
        result = run_sweep(spec, out=args.out, quiet=args.quiet, worker=args.worker, command=args.argv)
    except SweepInterrupted as e:
        if args.worker is None:  # the first process speaks for the sweep
            print(f"mnistlab sweep: {e}", file=sys.stderr)
        return e.exit_code
    if result is not None:
        print(format_table(result.rows, spec))
        print(f"\nsweep folder: {result.out} ({', '.join(p.name for p in result.files.values())})")
    return 0


def _escape_undecodable(err: UnicodeError) -> tuple[str, int]:
    """Encoding error handler: a byte of a file name that was not UTF-8 (Python keeps it as a surrogate) as
    ``\\xe9``, as ``predict.printable`` writes it; any other unencodable character as its escape."""
    if not isinstance(err, UnicodeEncodeError):
        raise err
    chars = err.object[err.start:err.end]
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                   else c.encode("ascii", "backslashreplace").decode() for c in chars), err.end


codecs.register_error("mnistlab_escape", _escape_undecodable)


def main(argv: list[str] | None = None) -> int:
    # A path given on the command line may hold bytes that are not UTF-8. Printing it (a run folder, a
    # checkpoint, a report) to a strict UTF-8 stdout raised UnicodeEncodeError, a traceback after the work
    # was done; stderr already escapes such characters.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="mnistlab_escape")
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    words = list(sys.argv[1:] if argv is None else argv)
    if unknown:
        command = parser.commands[args.command]
        if words[:1] == [args.command] and any(not word.startswith("-") for word in unknown):
            # `predict RUN a.png --top-k 1 b.png`, `compare runs/a --json runs/b`: argparse gives a list argument
            # only the words before the first flag, and said "unrecognized arguments: b.png". Parsed again with
            # the flags and the words in any order; what is still left over is the command's error.
            args = command.parse_intermixed_args(words[1:], argparse.Namespace(command=args.command))
        else:  # the command's own error: "mnistlab: ... (see mnistlab --help)" led to a list of the commands
            command.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.argv = words  # what `train --nproc N` passes on to torchrun
    handler = {
        "train": _cmd_train,
        "evaluate": _cmd_evaluate,
        "models": _cmd_models,
        "predict": _cmd_predict,
        "export": _cmd_export,
        "report": _cmd_report,
        "compare": _cmd_compare,
        "lr-find": _cmd_lr_find,
        "ensemble": _cmd_ensemble,
        "bench": _cmd_bench,
        "sweep": _cmd_sweep,
    }[args.command]
    # SIGTERM as an exception, as Ctrl-C is, for the commands that do not train: what they write unwinds (atomic
    # writes remove their temporary file, a report or export cut short its pieces, bench its runs' temporary
    # folders, a sweep its trial, kept or marked failed). Inside a training run the trainer's own handler takes
    # over, ends the step and saves first; outside those steps train() sets its own (training/run.py), which
    # adds the resume line, and lr-find has this one (with the default, a SIGTERM while it loaded the data ended
    # it without a word).
    # Only the main thread may set a handler: main() called from another thread keeps the one there is.
    sigterm = args.command != "train" and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, raise_signalled) if sigterm else None
    try:
        _import_torch(args.command)
        return handler(args)
    except MnistlabError as e:
        if not leave_error(str(e)):  # in a process of `train --nproc`: the launcher prints it, once
            _clear_progress_line()  # an error in mid-epoch would begin at the end of the progress bar
            print(f"mnistlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM as Signalled, which carries its signal
        # train's, outside the trainer's steps or a second Ctrl-C in them, carries how to resume from last.ckpt
        return _interrupted(args.command, getattr(e, "signum", signal.SIGINT),
                            resume_with=getattr(e, "resume_with", None))
    except BrokenPipeError:  # `mnistlab models | head`: the reader left; say nothing more, as a SIGPIPE death would
        from .training.display import divert_to_devnull

        divert_to_devnull(sys.stdout)  # the interpreter's last flush goes nowhere
        return 141
    except Exception:  # a bug's traceback, on a line of its own too
        _clear_progress_line()
        raise
    finally:
        if sigterm:
            signal.signal(signal.SIGTERM, previous)


def _import_torch(command: str) -> None:
    """Import torch, which every command uses, ending the process at once if Ctrl-C or SIGTERM comes meanwhile.

    The import takes seconds. A Ctrl-C in them raised KeyboardInterrupt wherever Python was: a traceback
    from deep inside torch, and inside the initialisation of torch's C++ extension a SystemError and then a
    segmentation fault. Nothing has been written yet, so ending at once loses nothing.
    """
    if "torch" in sys.modules or threading.current_thread() is not threading.main_thread():
        import torch  # noqa: F401
        return

    def end(signum: int, frame) -> None:
        os._exit(_interrupted(command, signum, progress=False))

    previous = {signum: signal.signal(signum, end) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        import torch  # noqa: F401
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _interrupted(command: str, signum: int, progress: bool = True, resume_with: str | None = None) -> int:
    """Say that Ctrl-C or a signal stopped ``command``, in one line (and ``resume_with``, the command that
    continues the run, on a second); its exit status (130, 143).

    In a process of `train --nproc` (or torchrun) only rank 0 says it: the signal reaches every process, and
    before or after the training loop (loading the data, testing) each one stopped by it printed the line.
    ``progress=False``: there is no progress line to clear (and its module, which needs torch, is not loaded).
    """
    if os.environ.get("RANK", "0") != "0":  # a torchrun worker other than rank 0 (see distributed.is_main)
        return 128 + signum
    if progress:
        _clear_progress_line()
    print(f"mnistlab {command}: interrupted by {signal.Signals(signum).name}", file=sys.stderr, flush=True)
    if resume_with:
        print(f"resume with: {resume_with}", file=sys.stderr, flush=True)
    return 128 + signum


def _clear_progress_line() -> None:
    from .training.display import clear_progress_line

    clear_progress_line()


def run() -> None:
    """The ``mnistlab`` command (and ``python -m mnistlab``): :func:`main`, then exit with its status.

    The exit skips the interpreter's teardown, which frees every module's objects one by one: with torch,
    its compiler and matplotlib loaded that took 1 to 2.5 s on the 2-core CPU after a run had finished and
    printed its result -- as long as a short run's training. In a torchrun worker it also freed gloo's C++
    objects in no set order, which now and then aborted a finished worker ("terminate called without an
    active exception", SIGABRT: 1 run in about 7 on the loaded 2-core CI machine), and torchrun then failed
    the whole run. What an exit must do is still done, in the interpreter's order: other threads are waited
    for, the atexit handlers run (temporary folders, logging, worker pools), and the output is flushed.
    """
    code = main()
    if not (hasattr(threading, "_shutdown") and hasattr(atexit, "_run_exitfuncs")):  # not CPython: the usual exit
        sys.exit(code)
    threading._shutdown()
    # A Ctrl-C (or SIGTERM) now would print a traceback from inside an exit handler: the command has said its
    # last word, and a second Ctrl-C is to end it at once, with the status it has.
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda signum, frame: os._exit(code or 128 + signum))
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a full disk, a closed stream: the interpreter's exit status for it
            code = code or 120
    os._exit(code or 0)


if __name__ == "__main__":
    run()
