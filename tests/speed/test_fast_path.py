"""The fast path gives the same results as the straightforward one; timings are never tested here.

Small synthetic cases, so every test runs in a second or two: channels-last
training against NCHW training, the Trainer's loop against a plain reference
loop over the same batches, pool-before-ReLU against ReLU-before-pool, and the
``bench`` command end to end on a tiny setting.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnistlab import Config, apply_overrides
from mnistlab.bench import format_table, synthetic_data
from mnistlab.data.batching import epoch_permutation, iterate_batches
from mnistlab.errors import ConfigError
from mnistlab.machine import native_bf16
from mnistlab.models import build_model
from mnistlab.training.fit import Trainer, use_channels_last
from tiny_bench import first_test_images, small_matmuls

STEPS, BATCH = 4, 32


def _config(*extra: str) -> Config:
    # fp32: the reference loops below compute in fp32 (precision auto is bf16 on a CPU with bf16 instructions)
    return apply_overrides(Config(), [
        "model.name=cnn", "model.channels=[4, 8]", f"train.batch_size={BATCH}", "train.epochs=1",
        "train.progress=false", "train.device=cpu", "schedule.name=constant", "optimizer.lr=0.001",
        "train.precision=fp32", *extra,
    ])


def _model(cfg: Config, data) -> nn.Module:
    torch.manual_seed(0)
    return build_model(cfg.model.name, num_classes=10, in_channels=1, image_size=(28, 28), mean=data.mean,
                       std=data.std, **cfg.model.options())


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs")


@pytest.fixture(scope="module")
def data():
    return synthetic_data(STEPS * BATCH, val=8, seed=1)


def test_channels_last_training_equals_contiguous_training(data):
    results = {}
    for cl in (False, True):
        cfg = _config(f"train.channels_last={str(cl).lower()}")
        model = Trainer(_model(cfg, data), data, cfg).fit().model
        if cl:
            assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
        results[cl] = _weights(model)
    _assert_close(results[True], results[False])


def test_channels_last_auto_follows_the_model_and_device_and_an_explicit_setting_wins():
    # alexnet: NCHW was faster on the CPU (a choice of the model's, at any width: 0.125 builds in a quarter second)
    small, big = build_model("fast"), build_model("alexnet", width=0.125)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_channels_last(None, small, cpu) and not use_channels_last(None, big, cpu)
    assert use_channels_last(None, big, cuda)  # NHWC is what tensor cores want
    # (width 0.25: resnet18 at 0.125 has an 8-channel 1x1 strided shortcut, which nhwc_crash_layer keeps in NCHW)
    assert all(use_channels_last(None, build_model(name, width=0.25), cpu) for name in ("resnet18", "resnet50", "vgg11"))
    assert use_channels_last(None, build_model("vgg", channels=[8, "M", 16, "M"]), cpu)  # benchmarks/vgg_layout.py
    assert not use_channels_last(False, small, cpu) and use_channels_last(True, big, cpu)
    assert Config().train.channels_last is None  # auto is the default


def test_trainer_equals_a_plain_reference_loop(data):
    cfg = _config()
    fit = Trainer(_model(cfg, data), data, cfg).fit()

    # The straightforward loop: same initial weights, same batches, PyTorch's default (for-loop) Adam.
    model = _model(cfg, data)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr, betas=cfg.optimizer.betas, foreach=False)
    losses = []
    order = epoch_permutation(len(data.train), cfg.train.seed, 1)
    for x, y in iterate_batches(data.train, BATCH, order=order):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())

    assert fit.steps == len(losses) == STEPS
    assert fit.history[0]["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    _assert_close(_weights(fit.model), _weights(model))


@pytest.mark.parametrize("name, options", [
    ("fast", {"batch_norm": False}),
    ("fast", {"batch_norm": True}),
    ("vgg", {"channels": [4, 4, "M", 8, "M", "M"], "hidden": [16], "dropout": 0.0}),  # also a pool after a pool
])
def test_pool_before_relu_is_the_same_function(name, options):
    model = build_model(name, num_classes=10, in_channels=1, image_size=(28, 28), **options)
    pairs = [(type(a), type(b)) for a, b in zip(model.features, model.features[1:])]
    assert (nn.MaxPool2d, nn.ReLU) in pairs and (nn.ReLU, nn.MaxPool2d) not in pairs  # the fast path's order
    # The textbook order, with the very same modules: conv [-> BN] -> ReLU -> pool.
    textbook = copy.deepcopy(model)
    layers = list(textbook.features)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], nn.MaxPool2d) and isinstance(layers[i + 1], nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    textbook.features = nn.Sequential(*layers)
    x = torch.rand(6, 1, 28, 28)
    outs = []
    for net in (model, textbook):
        out = net(x)
        out.square().sum().backward()
        outs.append((out, [p.grad for p in net.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for g1, g2 in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(g1, g2)


def test_bf16_autocast_trains_fp32_weights(data):
    cfg = _config("train.precision=bf16")
    fit = Trainer(_model(cfg, data), data, cfg).fit()
    assert fit.history[0]["train_loss"] == pytest.approx(Trainer(_model(_config(), data), data, _config()).fit()
                                                         .history[0]["train_loss"], rel=0.05)
    assert all(p.dtype == torch.float32 for p in fit.model.parameters())


def test_compiled_training_equals_eager_training_and_compiles_before_the_clock(data, caplog):
    """train.compile: the weights eager training reaches, and no compiling inside the timed training steps.

    Batches of 48 of 128 images end with one of 32, the second shape dynamo compiles for; the model has batch
    norm and dropout, so the compile's warm-up passes would show if they left statistics or RNG draws behind.
    """
    import torch._inductor.config
    from torch._dynamo.utils import counters

    from mnistlab.callbacks import Callback

    class Compiles(Callback):  # dynamo's count of compiled frames at the first step and at the end
        def __init__(self):
            self.seen = []

        def on_batch_begin(self, step, trainer):
            if step == 0:
                self.seen.append(counters["frames"]["total"])

        def on_train_end(self, metrics, trainer):
            self.seen.append(counters["frames"]["total"])

    options = ["train.batch_size=48", "model.batch_norm=true", "model.hidden=[16]", "model.dropout=0.5"]
    eager_cfg = _config(*options)
    eager = Trainer(_model(eager_cfg, data), data, eager_cfg).fit()
    cfg = _config(*options, "train.compile=true")
    compiles = Compiles()
    # Inductor draws dropout masks its own way unless told to call PyTorch's eager random ops. (Its config's
    # own patch: pytest's monkeypatch deletes the setting from inductor's config module when it undoes.)
    with torch._inductor.config.patch(fallback_random=True):
        compiled = Trainer(_model(cfg, data), data, cfg, callbacks=[compiles]).fit()

    assert eager.steps == compiled.steps == 3
    assert eager.compile_seconds == 0 and compiled.compile_seconds > 0
    assert compiles.seen[0] > 0 and compiles.seen[1] == compiles.seen[0]  # compiled, and before the first step
    torch.testing.assert_close(compiled.history[0]["train_loss"], eager.history[0]["train_loss"], rtol=1e-4, atol=0)
    _assert_close(_weights(compiled.model), _weights(eager.model))  # BN's running statistics among them
    # The note inductor's first compile logs on a machine without CUDA (once per process) is kept off a CPU run.
    logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr")
    assert "No CUDA runtime" not in caplog.text


def test_a_step_that_does_not_compile_is_a_config_error_naming_the_way_out_and_writes_no_run(mnist_root, tmp_path,
                                                                                            monkeypatch):
    from mnistlab.training import train

    class Broken(nn.Module):  # stands for what torch.compile returns when inductor fails (no C++ compiler)
        def forward(self, x):
            raise RuntimeError("backend='inductor' raised:\nCppCompileError: C++ compile error\n(pages more)")

    monkeypatch.setattr(torch, "compile", lambda module: Broken())
    cfg = _config("train.compile=true", f"data.dir={mnist_root}", "data.train_limit=256", "data.val_size=64")
    with pytest.raises(ConfigError, match=r"torch.compile could not compile the training step \(backend='inductor' "
                                          r"raised: CppCompileError: C\+\+ compile error\); set train.compile = false"):
        train(cfg, out=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()  # compiled before the run folder is made: --out is free for a retry


def test_format_table_aligns_numbers_right():
    text = format_table([{"model": "cnn", "images/s": 5}, {"model": "fast", "images/s": 1234}])
    assert text.splitlines() == ["model  images/s", "-----  --------", "cnn           5", "fast       1234"]


def test_bench_command_runs_on_a_tiny_setting(mnist_root, capsys, monkeypatch):
    from mnistlab.cli import main

    # Tinier still where no line below depends on the size: small matmuls, 1,000 test images, 100 validation ones.
    small_matmuls(monkeypatch)
    first_test_images(monkeypatch)
    code = main(["bench", "--data-dir", str(mnist_root), "--train-limit", "256", "--steps", "1", "--models", "cnn",
                 "--rounds", "2", "--set", "train.epochs=1", "--set", "checkpoint.save_top_k=0",
                 "--set", "data.val_size=100"])
    out = capsys.readouterr().out
    assert code == 0
    assert "public recipe" in out and "this config" in out
    assert "time to accuracy on mnist's test set" in out and "evaluation of mnist's test split" in out  # which data
    assert ("with bf16 instructions" in out.splitlines()[0]) is native_bf16()  # the machine line
    assert "fraction" in out and "images/s" in out and "fraction range" in out  # medians of 2 rounds
    assert out.count("cnn") >= 2  # the training-rate row and the evaluation row
    assert f"({torch.backends.cpu.get_cpu_capability()})" in out.splitlines()[0]  # the machine line names the ISA
    if torch.get_num_threads() > 1:
        assert "fp32 matmul on 1 thread: " in out and f"on {torch.get_num_threads()} threads: " in out


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds must be at least 1, got 0"),
    (["--train-limit", "0"], "--train-limit must be at least 1, got 0"),  # not "no limit"
    (["--steps", "0"], "--steps must be at least 1"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--models", "cnn", "nope"], "unknown model 'nope'"),
    (["--models", "vgg"], "--models vgg: model \"vgg\" needs a layout"),  # found after the timed runs before
])
def test_bench_checks_its_arguments_before_any_run(argv, message, capsys, monkeypatch):
    from mnistlab import bench
    from mnistlab.cli import main

    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("bench ran with a bad argument"))
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("folder", ["2024", "true", "none"])
def test_bench_takes_its_data_dir_as_a_path_whatever_its_name(folder, tmp_path, monkeypatch):
    # It went through a "data.dir=..." string, read as TOML: 2024 was a number, none no folder at all.
    from mnistlab import bench
    from mnistlab.cli import main

    seen = []
    monkeypatch.setattr(bench, "run_bench", lambda cfg, **k: seen.append(cfg.data.dir))
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--data-dir", folder]) == 0
    assert seen == [folder]


def test_every_matmul_path_of_the_roofline_reference_computes_the_product():
    # The roofline's "machine rate" is the best of these paths; each must time a real a @ b, not a cheaper op.
    from mnistlab.bench import matmul_gflops, matmul_paths, matmul_rates

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(48, 32, generator=g), torch.randn(32, 40, generator=g)
    paths = matmul_paths(a, b)
    assert "mm" in paths
    if torch.backends.mkldnn.is_available():
        assert "onednn" in paths  # the convolutions' own library, faster than MKL's mm on AMD CPUs
    for name, product in paths.items():
        out = product()
        out = out.to_dense() if out.is_mkldnn else out
        torch.testing.assert_close(out, a @ b, msg=f"matmul path {name!r}")
    rates = matmul_rates(n=64, repeats=1)
    assert rates.keys() == paths.keys() and all(r > 0 for r in rates.values())
    assert matmul_gflops(n=64, repeats=1) > 0


def test_matmul_rates_in_bf16_time_a_bf16_product(monkeypatch):
    from mnistlab import bench

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(48, 32, generator=g).bfloat16(), torch.randn(32, 40, generator=g).bfloat16()
    for name, product in bench.matmul_paths(a, b).items():
        out = product()
        out = out.to_dense() if out.is_mkldnn else out
        assert out.dtype == torch.bfloat16, name  # not a product in fp32 after all
        torch.testing.assert_close(out.float(), a.float() @ b.float(), rtol=2e-2, atol=2e-1, msg=name)
    seen = []
    real = bench.matmul_paths
    monkeypatch.setattr(bench, "matmul_paths", lambda a, b: (seen.append((a.dtype, b.dtype)), real(a, b))[1])
    assert all(r > 0 for r in bench.matmul_rates(n=64, repeats=1, dtype=torch.bfloat16).values())
    assert seen == [(torch.bfloat16, torch.bfloat16)]


def test_roofline_in_bf16_trains_in_bf16_and_gives_both_fractions(monkeypatch):
    from mnistlab import bench
    from mnistlab.models.summary import count_macs

    asked = []
    monkeypatch.setattr(bench, "matmul_rates", lambda *a, dtype=torch.float32, **k:
                        {"mm": 400.0 if dtype == torch.bfloat16 else 100.0})
    monkeypatch.setattr(bench, "training_rate", lambda name, overrides=(), **k: (asked.append(list(overrides)), 1e4)[1])
    macs = count_macs(build_model("cnn", num_classes=10, in_channels=1, image_size=(28, 28)))
    gflops = 3 * 2 * macs * 1e4 / 1e9
    fp32, bf16 = bench.roofline(["cnn"])[0], bench.roofline(["cnn"], precision="bf16")[0]
    assert [o[-1] for o in asked] == ["train.precision=fp32", "train.precision=bf16"]
    assert fp32["precision"] == "fp32" and fp32["fraction"] == f"{gflops:.0f}%" and "of bf16" not in fp32
    assert bf16["precision"] == "bf16" and bf16["fraction"] == f"{gflops:.0f}%"  # of the fp32 rate, 100 GFLOP/s
    assert bf16["bf16 matmul GFLOP/s"] == 400.0 and bf16["of bf16"] == f"{gflops / 4:.0f}%"


def test_roofline_counts_the_macs_of_the_model_its_overrides_train(monkeypatch):
    # It built the default model for its MACs: overrides=["model.width=0.5"] reported the full width's, and a
    # fraction of the machine's rate about 4x what the half-width model reached
    from mnistlab import bench
    from mnistlab.models.summary import count_macs

    monkeypatch.setattr(bench, "matmul_rates", lambda *a, **k: {"mm": 100.0})
    monkeypatch.setattr(bench, "training_rate", lambda name, **k: 1e4)
    half = count_macs(build_model("cnn", num_classes=10, in_channels=1, image_size=(28, 28), width=0.5))
    row = bench.roofline(["cnn"], overrides=["model.width=0.5"])[0]
    assert row["MMACs/image"] == round(half / 1e6, 2) != round(count_macs(build_model("cnn")) / 1e6, 2)


def test_roofline_takes_device_auto_as_training_does(monkeypatch):
    # torch.device("auto") raised RuntimeError ("Expected one of cpu, cuda, ... device type"): a traceback
    from mnistlab import bench

    devices = []
    monkeypatch.setattr(bench, "matmul_rates", lambda *a, device="cpu", **k: (devices.append(device), {"mm": 1.0})[1])
    monkeypatch.setattr(bench, "training_rate", lambda name, device="cpu", **k: (devices.append(device), 1e4)[1])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert bench.roofline(["cnn"], device="auto")[0]["layout"] == "NHWC"  # cnn's CPU layout
    assert devices == ["cpu", "cpu"]


def test_roofline_rounds_give_the_median_fraction_each_against_its_own_matmul_rate(monkeypatch):
    from mnistlab import bench
    from mnistlab.models import build_model
    from mnistlab.models.summary import count_macs

    rates, images = iter([100.0, 200.0, 50.0]), iter([2e4, 1e4, 1e4])  # fractions 2f, f/2, 2f
    monkeypatch.setattr(bench, "matmul_rates", lambda *a, **k: {"mm": next(rates)})
    monkeypatch.setattr(bench, "training_rate", lambda *a, **k: next(images))
    f = 3 * 2 * count_macs(build_model("cnn", num_classes=10, in_channels=1, image_size=(28, 28))) * 1e4 / 1e9 / 100
    row = bench.roofline(["cnn"], rounds=3)[0]
    assert row["fraction"] == f"{200 * f:.0f}%"  # the median of the rounds' fractions, not the medians' ratio (f)
    assert row["fraction range"] == f"{50 * f:.0f}-{200 * f:.0f}%"
    assert row["images/s"] == 10000 and row["matmul GFLOP/s"] == 100.0


def test_matmul_rates_on_one_thread_put_the_thread_count_back(monkeypatch):
    from mnistlab import bench

    seen = []
    real = bench.matmul_paths
    monkeypatch.setattr(bench, "matmul_paths", lambda a, b: (seen.append(torch.get_num_threads()), real(a, b))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert all(r > 0 for r in bench.matmul_rates(n=64, repeats=1, threads=1).values())
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
