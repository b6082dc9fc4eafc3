"""trainer.run_dir as a callback sees it, for a run folder given as a relative path (as `mnistlab train` does)."""

from __future__ import annotations

from mnistlab import Callback, apply_overrides, build_model, fit
from mnistlab.config import Config


class SaveBeside(Callback):
    """What a user writes to keep a model of their own beside best.ckpt."""

    def on_epoch_end(self, epoch, metrics, trainer):
        self.seen = trainer.run_dir
        trainer.save_checkpoint(trainer.run_dir / "mine.ckpt")


def test_save_checkpoint_under_run_dir_lands_in_the_run_folder(mnist_small, mnist_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = apply_overrides(Config(), [f"data.dir={mnist_root}", "train.epochs=1", "train.progress=false",
                                     "tensorboard.enabled=false", "model.name=cnn", "model.width=0.25"])
    model = build_model("cnn", width=0.25, mean=mnist_small.mean, std=mnist_small.std)
    callback = SaveBeside()
    fit(model, mnist_small, cfg, run_dir="runs/x", callbacks=[callback])
    # A relative run_dir came back as it was given, and save_checkpoint put it under the run folder once more:
    # runs/x/runs/x/mine.ckpt.
    assert not (tmp_path / "runs" / "x" / "runs").exists()
    assert (tmp_path / "runs" / "x" / "mine.ckpt").is_file()
    assert callback.seen == tmp_path / "runs" / "x"  # absolute, so open(trainer.run_dir / ...) agrees
