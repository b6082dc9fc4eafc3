"""Resume audit 119: corners of `train(cfg, resume=...)` under the Python API and signals where no step follows.

Small in-process runs on ``mini_root`` (2,000 MNIST images in the KMNIST layout), a quarter of cnn's width.
"""

from __future__ import annotations

import os
import signal

import pytest

from mnistlab.config import Config, apply_overrides
from mnistlab.errors import ConfigError, RunDirError, Signalled
from mnistlab.training import train


def small_cfg(root, *overrides):
    return apply_overrides(Config(), [
        f"data.dir={root}", "data.dataset=kmnist", "data.train_limit=400", "data.val_size=200", "model.name=cnn",
        "data.test_limit=2000",  # the final test on 2,000 images: a fifth of its time
        "model.width=0.25", "train.batch_size=100", "train.threads=1", "train.precision=fp32", "train.epochs=1",
        "schedule.name=constant", "tensorboard.enabled=false", *overrides,
    ])


def test_out_given_with_resume_is_refused_not_ignored(mini_root, tmp_path):
    # train(cfg, out=new, resume=old) trained on in old and never made new, where the caller then looked.
    cfg = small_cfg(mini_root)
    train(cfg, out=tmp_path / "a", quiet=True)
    before = (tmp_path / "a" / "last.ckpt").read_bytes()
    with pytest.raises(RunDirError, match="cannot be combined with resume.*continues in its own folder"):
        train(apply_overrides(cfg, ["train.epochs=2"]), out=tmp_path / "b", resume=tmp_path / "a", quiet=True)
    assert not (tmp_path / "b").exists()
    assert (tmp_path / "a" / "last.ckpt").read_bytes() == before  # nothing trained
    # the run's own folder, however it is written, is what resume means: accepted
    result = train(apply_overrides(cfg, ["train.epochs=2"]), out=tmp_path / "x" / ".." / "a",
                   resume=tmp_path / "a" / "last.ckpt", quiet=True)
    assert result.fit.epochs == 2 and result.run_dir == tmp_path / "a"


def test_a_resume_under_the_api_refuses_another_init_from(mini_root, tmp_path):
    # The CLI refuses --set finetune.init_from on --resume; train(cfg, resume=...) trained on from last.ckpt and
    # wrote the new init_from into config.toml, naming weights the run never started from.
    cfg = small_cfg(mini_root)
    train(cfg, out=tmp_path / "a", quiet=True)
    changed = apply_overrides(cfg, ["train.epochs=2", f"finetune.init_from={tmp_path / 'a' / 'best.ckpt'}"])
    with pytest.raises(ConfigError, match="finetune.init_from was unset .new weights., now .*best.ckpt: a resumed"):
        train(changed, resume=tmp_path / "a", quiet=True)
    assert "best.ckpt" not in (tmp_path / "a" / "config.toml").read_text()  # still "# init_from = (default)"


class SignalAt:
    """Sends this process ``signum`` from the hook named ``hook`` (as Ctrl-C or a scheduler's kill would)."""

    def __init__(self, hook, signum):
        self.hook, self.signum = hook, signum

    def __getattr__(self, hook):
        if not hook.startswith("on_"):
            raise AttributeError(hook)
        return (lambda *a, **k: os.kill(os.getpid(), self.signum)) if hook == self.hook else (lambda *a, **k: None)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@pytest.mark.parametrize("signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Signalled)])
def test_a_signal_as_a_finished_run_is_resumed_stops_it_instead_of_being_ignored(mini_root, tmp_path, signum, raised):
    # A resumed run with nothing left to train takes no step, where the guard acts on a signal: one that came in
    # the callbacks' start (TensorBoard's graph, a second or so) was swallowed, and the run went on to its whole
    # final test and summary as if no Ctrl-C had come.
    cfg = small_cfg(mini_root)
    train(cfg, out=tmp_path / "a", quiet=True)
    summary = (tmp_path / "a" / "summary.json").read_bytes()
    with pytest.raises(raised) as caught:
        train(cfg, resume=tmp_path / "a", quiet=True, callbacks=[SignalAt("on_train_begin", signum)])
    assert caught.value.resume_with == f"mnistlab train --resume {tmp_path / 'a'}"
    assert (tmp_path / "a" / "summary.json").read_bytes() == summary  # not tested again
    assert not (tmp_path / "a" / "run.lock").exists()
    # and the folder resumes as before
    assert train(cfg, resume=tmp_path / "a", quiet=True).summary["stopped_by"] == "max_epochs"
