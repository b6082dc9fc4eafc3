"""Checks that need CUDA (run by `make test` on a machine with a GPU)."""

import torch
from torch._dynamo.utils import counters

from mnistlab import Config, apply_overrides
from mnistlab.callbacks import Callback
from mnistlab.data import epoch_permutation
from mnistlab.training import train


def test_epoch_permutation_is_the_same_on_cuda():
    cuda = epoch_permutation(1000, 0, 1, "cuda")
    assert cuda.device.type == "cuda" and torch.equal(cuda.cpu(), epoch_permutation(1000, 0, 1, "cpu"))


def test_batches_of_a_cuda_split_follow_an_order_made_on_the_cpu():
    # iterate_batches moves the order to the images' device: index_select on CUDA images with a CPU index fails
    from mnistlab.data.batching import iterate_batches
    from mnistlab.data.datasets import Split

    split = Split(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10))
    order = epoch_permutation(10, 3, 1)  # on the CPU
    on_cpu = [y.tolist() for _, y in iterate_batches(split, 4, order=order)]
    on_cuda = [y.cpu().tolist() for _, y in iterate_batches(split.to("cuda"), 4, order=order)]
    assert on_cuda == on_cpu and len(on_cpu) == 3


def _conv_after_the_first(model):
    """A conv with more than one input channel: a one-channel weight, (out, 1, k, k), is contiguous in both
    layouts, so the first conv of an MNIST model says nothing about channels-last."""
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)


class _Look(Callback):
    """What the first training step ran on (the data, the weights, and a conv's output in the step: its dtype
    under autocast and its layout), and dynamo's count of compiled frames there and at the end."""

    def __init__(self):
        self.seen, self.frames, self.output, self._hook = {}, [], {}, None

    def on_train_begin(self, trainer):
        if not trainer.cfg.train.compile:  # a hook added after compiling would make dynamo compile again
            self._hook = _conv_after_the_first(trainer.model).register_forward_hook(self._record)

    def _record(self, module, inputs, output):
        if module.training and torch.is_grad_enabled() and not self.output:  # a training step, not validation
            self.output = {"dtype": output.dtype, "device": output.device.type,
                           "channels_last": output.is_contiguous(memory_format=torch.channels_last)
                           and not output.is_contiguous()}

    def on_batch_begin(self, step, trainer):
        if step == 0:
            self.frames.append(counters["frames"]["total"])

    def on_batch_end(self, step, metrics, trainer):
        if step == 1:
            conv = _conv_after_the_first(trainer.model)
            self.seen = {"images": trainer.data.train.images.device.type,
                         "weights": conv.weight.device.type,
                         "channels_last": conv.weight.is_contiguous(memory_format=torch.channels_last)
                         and not conv.weight.is_contiguous()}

    def on_train_end(self, metrics, trainer):
        self.frames.append(counters["frames"]["total"])
        if self._hook is not None:
            self._hook.remove()


def _cuda_run(mnist_root, out, *overrides):
    cfg = apply_overrides(Config(), [f"data.dir={mnist_root}", "data.train_limit=3000", "data.download=false",
                                     "train.device=cuda", "train.progress=false", *overrides])
    look = _Look()
    return train(cfg, out=out, quiet=True, report=False, callbacks=[look]), look


def test_the_cuda_path_keeps_the_data_on_the_gpu_in_channels_last_and_bf16(mnist_root, tmp_path):
    run, look = _cuda_run(mnist_root, tmp_path / "run")
    assert look.seen == {"images": "cuda", "weights": "cuda", "channels_last": True}
    from mnistlab.training.fit import cuda_native_bf16

    native = cuda_native_bf16(torch.device("cuda"))  # bf16 from Ampere on; an older GPU emulates it, slower than fp32
    assert run.summary["precision"] == ("bf16" if native else "fp32")
    # in the step itself: the conv ran on the GPU, in bf16 autocast, and wrote its output channels-last
    assert look.output == {"dtype": torch.bfloat16 if native else torch.float32, "device": "cuda",
                           "channels_last": True}
    assert run.summary["device"].startswith("cuda") and "gpu" in run.summary
    assert run.summary["test_accuracy"] > 0.9  # the default recipe, two epochs of 3,000 images
    assert "compile_seconds" not in run.summary


def test_train_compile_on_cuda_compiles_before_the_clock_and_trains_as_well(mnist_root, tmp_path):
    run, look = _cuda_run(mnist_root, tmp_path / "run", "train.compile=true")
    assert run.summary["compile_seconds"] > 0
    assert look.frames[0] > 0 and look.frames[1] == look.frames[0]  # no compiling inside the timed steps
    assert run.summary["test_accuracy"] > 0.9


def test_fp16_trains_on_cuda_with_a_loss_scale(mnist_root, tmp_path):
    """The precision for GPUs before Ampere; any CUDA GPU computes in fp16."""
    run, look = _cuda_run(mnist_root, tmp_path / "run", "train.precision=fp16")
    assert look.seen["images"] == "cuda"
    assert run.summary["precision"] == "fp16"
    assert 0 <= run.summary["skipped_steps"] < 10  # the scale starts at 2**16; a few early overflows at most
    assert run.summary["test_accuracy"] > 0.9


def test_deterministic_gpu_runs_repeat_bit_for_bit(mnist_root, tmp_path):
    """train.deterministic: cuDNN's deterministic algorithms, no TF32, a fixed cuBLAS workspace."""
    from mnistlab.training import read_checkpoint

    for name in ("a", "b"):
        _cuda_run(mnist_root, tmp_path / name, "train.deterministic=true", "data.train_limit=1000", "train.epochs=1")
    a, b = (read_checkpoint(tmp_path / name / "last.ckpt")["model"] for name in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_python_apis_cpu_data_trains_and_scores_a_model_on_cuda(mnist_root):
    """The README's Python API: load_data(cfg.data) keeps the images on the CPU, fit() puts the model on the GPU
    (train.device auto); evaluate() then scores the CUDA model on the CPU split."""
    from mnistlab import build_model, evaluate, fit, load_data

    cfg = apply_overrides(Config(), [f"data.dir={mnist_root}", "data.train_limit=1000", "data.val_size=200",
                                     "train.epochs=1", "train.device=cuda"])
    data = load_data(cfg.data)
    assert data.train.images.device.type == "cpu"
    model = build_model("cnn", mean=data.mean, std=data.std)
    result = fit(model, data, cfg)
    assert next(result.model.parameters()).device.type == "cuda"
    assert evaluate(result.model, data.test).accuracy > 0.8
