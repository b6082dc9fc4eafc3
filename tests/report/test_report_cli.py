"""The commands: `mnistlab report`, `mnistlab compare` and `mnistlab models --details`."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from mnistlab.cli import main
from mnistlab.report.compare import compare_runs, format_table
from mnistlab.report.plots import pareto_front


def fake_run(folder, **summary):
    """A run folder holding only a summary.json (what a run from another machine may look like)."""
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def zoo(root):
    """Runs of four models as a user would compare them, plus an unfinished one."""
    common = dict(dataset="mnist", device="cpu", stopped_by="max_epochs")
    fake_run(root / "lenet", model="lenet5", parameters=61_706, epochs=10, train_seconds=40.0, best_val_accuracy=0.989,
             test_accuracy=0.9891, stop_reason="max epochs reached (10)", **common)
    fake_run(root / "alexnet", model="alexnet", parameters=71_988_682, epochs=10, train_seconds=2400.0,
             best_val_accuracy=0.993, test_accuracy=0.9921, stop_reason="max epochs reached (10)", **common)
    fake_run(root / "vgg", model="vgg11", parameters=9_750_922, epochs=6, train_seconds=1500.0, best_val_accuracy=0.994,
             test_accuracy=0.9935, stop_reason="early stopping: val_loss did not improve for 3 epochs at epoch 6",
             **common)
    fake_run(root / "resnet", model="resnet18", parameters=11_172_810, epochs=10, train_seconds=900.0,
             best_val_accuracy=0.995, test_accuracy=0.9948, stop_reason="max epochs reached (10)", **common)
    unfinished = root / "more" / "unfinished"
    unfinished.mkdir(parents=True)
    (unfinished / "metrics.csv").write_text(
        "epoch,train_loss,train_accuracy,train_error,val_loss,val_accuracy,val_error,lr,seconds\n"
        "1,0.5,0.9,0.1,0.2,0.95,0.05,0.01,12.5\n2,0.2,0.95,0.05,0.1,0.97,0.03,0.01,12.0\n"
    )
    return root


def test_compare_sorts_by_test_accuracy_and_plots(tmp_path, capsys):
    root = zoo(tmp_path / "runs")
    plot = tmp_path / "out" / "compare.png"
    assert main(["compare", str(root), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["run", "model", "parameters", "epochs", "train", "s", "best", "val", "acc", "test", "acc",
                                "stop", "reason"]
    order = [line.split()[1] for line in lines[2:7]]
    assert order == ["resnet18", "vgg11", "alexnet", "lenet5", "?"]
    assert "99.48%" in lines[2] and "71,988,682" in lines[4] and "2400.0" in lines[4]
    assert "early stopping: val_loss did not improve" in lines[3]
    assert "not finished (no summary.json)" in lines[6] and "24.5" in lines[6] and "97.00%" in lines[6]
    assert f"plot of test accuracy against training time: {plot}" in out
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.size[0] > 400
    # A summary.json that is there but unreadable is not called missing.
    (root / "more" / "unfinished" / "summary.json").write_text("{not json")
    assert main(["compare", str(root / "more"), "--plot", str(tmp_path / "out" / "more.png")]) == 0
    assert "summary.json unreadable" in capsys.readouterr().out

    assert main(["compare", str(root / "lenet"), str(root / "vgg"), str(root / "vgg"), "--json",
                 "--plot", str(tmp_path / "c2.png")]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["vgg11", "lenet5"]  # a run given twice counts once
    assert set(rows[0]) == {"run", "model", "dataset", "parameters", "epochs", "train_seconds", "best_val_accuracy",
                            "test_accuracy", "stop_reason", "device", "machine", "precision", "test_limit_images"}
    assert rows[0]["test_limit_images"] is None  # tested on the whole test set
    assert rows[0]["machine"] is None  # these summaries predate the cpu field
    assert "machine" not in lines[0]  # one machine (here: none recorded), no column


def test_compare_warns_when_runs_are_not_comparable(tmp_path):
    a = fake_run(tmp_path / "a", model="cnn", dataset="mnist", device="cuda", test_accuracy=0.99, train_seconds=5.0,
                 cpu="AMD EPYC (AVX2)", gpu="NVIDIA H200")
    b = fake_run(tmp_path / "b", model="cnn", dataset="kmnist", device="cpu", test_accuracy=0.95, train_seconds=50.0,
                 cpu="AMD EPYC (AVX2)")
    c = fake_run(tmp_path / "c", model="cnn", dataset="mnist", device="cuda", test_accuracy=0.97, train_seconds=5.0,
                 cpu="AMD EPYC (AVX2)", gpu="NVIDIA H200")
    text = format_table(compare_runs([a, b, c]))
    assert "different devices (cpu, cuda)" in text and "different datasets (kmnist, mnist); they are ranked " \
        "within each" in text
    assert "different machines" not in text  # the device note says it already
    header, _, first, second, third = text.splitlines()[:5]
    assert header.split()[:3] == ["run", "model", "dataset"]
    # grouped by dataset, best first within each: kmnist's 95% is not ranked below mnist's 97%
    assert [line.split()[0] for line in (first, second, third)] == [str(b), str(a), str(c)]
    assert " kmnist " in first and first.endswith("AMD EPYC (AVX2)  -")
    assert second.endswith("NVIDIA H200      -")  # on CUDA the GPU counts


def test_compare_does_not_count_a_run_without_summary_as_another_device(tmp_path):
    a = fake_run(tmp_path / "a", model="cnn", dataset="mnist", device="cpu", test_accuracy=0.99, train_seconds=5.0)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / "summary.json").unlink()  # interrupted before it was written: device and dataset unknown
    (b / "metrics.csv").write_text("epoch,train_loss,train_accuracy,train_error,val_loss,val_accuracy,val_error,lr,"
                                   "seconds\n1,0.5,0.9,0.1,0.2,0.95,0.05,0.01,12.5\n")
    text = format_table(compare_runs([a, b]))
    assert "note:" not in text  # "different devices (?, cpu)" said otherwise


def test_compare_shows_the_machine_when_runs_come_from_different_cpus(tmp_path):
    common = dict(model="fast", dataset="mnist", device="cpu", stop_reason="max epochs reached (2)")
    fake_run(tmp_path / "avx512", cpu="AMD EPYC (AVX512)", test_accuracy=0.992, train_seconds=6.3, **common)
    fake_run(tmp_path / "avx2", cpu="AMD EPYC (AVX2)", test_accuracy=0.9923, train_seconds=20.2, **common)
    fake_run(tmp_path / "old", test_accuracy=0.99, train_seconds=9.4, **common)
    lines = format_table(compare_runs([tmp_path])).splitlines()
    assert lines[0].split()[-3:] == ["machine", "stop", "reason"]
    rows = {line.split()[0]: line for line in lines[2:5]}
    assert "99.23%  AMD EPYC (AVX2)    max epochs" in rows[str(tmp_path / "avx2")]
    assert "AMD EPYC (AVX512)" in rows[str(tmp_path / "avx512")] and "not recorded" in rows[str(tmp_path / "old")]
    assert lines[-1] == ("note: the runs come from different machines (AMD EPYC (AVX2), AMD EPYC (AVX512)); "
                         "their training times are not comparable")
    # A run that does not name its machine is not known to differ: one named machine adds no column and no note.
    text = format_table(compare_runs([tmp_path / "avx2", tmp_path / "old"]))
    assert "machine" not in text.splitlines()[0] and "not comparable" not in text


def test_compare_shows_the_precision_when_runs_trained_in_different_ones(tmp_path):
    common = dict(model="fast", dataset="mnist", device="cpu", cpu="AMD EPYC (AVX512)")
    fake_run(tmp_path / "bf16", precision="bf16", test_accuracy=0.9926, train_seconds=1.96, **common)
    fake_run(tmp_path / "fp32", precision="fp32", test_accuracy=0.9922, train_seconds=2.30, **common)
    fake_run(tmp_path / "old", test_accuracy=0.99, train_seconds=2.6, **common)
    lines = format_table(compare_runs([tmp_path])).splitlines()
    assert lines[0].split()[-3:] == ["precision", "stop", "reason"]
    rows = {line.split()[0]: line for line in lines[2:5]}
    assert "99.26%  bf16" in rows[str(tmp_path / "bf16")] and "99.22%  fp32" in rows[str(tmp_path / "fp32")]
    assert "not recorded" in rows[str(tmp_path / "old")]
    assert lines[-1].startswith("note: the runs trained in different precisions (bf16, fp32)")
    # one recorded precision: no column, no note
    text = format_table(compare_runs([tmp_path / "fp32", tmp_path / "old"]))
    assert "precision" not in text


def test_compare_errors(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty")]) == 2
    assert "holds no run folders" in capsys.readouterr().err
    run = fake_run(tmp_path / "runs" / "a", model="cnn", test_accuracy=0.99)
    for plot in ("", ".", str(tmp_path)):  # names no file: one line, before any run is read
        assert main(["compare", str(run), "--plot", plot]) == 2
        assert ("got an empty one" if not plot else "it is a folder; choose another with --plot FILE") in \
            capsys.readouterr().err
    (tmp_path / "taken.png").write_bytes(b"")  # a file where the plot's folder would be: not "File exists"
    assert main(["compare", str(run), "--plot", str(tmp_path / "taken.png" / "c.png")]) == 2
    assert f"{tmp_path / 'taken.png'} is a file, not a folder; choose another" in capsys.readouterr().err


def test_compare_reads_a_damaged_summary_without_a_traceback(tmp_path):
    fake_run(tmp_path / "a", model="cnn", epochs="two", parameters=1.5, test_accuracy=0.9)
    (row,) = compare_runs([tmp_path])
    assert (row.epochs, row.parameters, row.test_accuracy) == (None, None, 0.9)


def test_the_compare_plot_has_a_front_per_dataset():
    # One front across datasets joined an MNIST run at 50% to a Fashion-MNIST one at 85%: not comparable
    from mnistlab.report.plots import group_fronts

    points = [{"train_seconds": t, "test_accuracy": a, "group": g} for t, a, g in
              [(1, 0.50, "mnist"), (2, 0.85, "fashion-mnist"), (3, 0.99, "mnist"), (4, 0.90, "fashion-mnist")]]
    assert group_fronts(points) == {"fashion-mnist": ([1, 3], [1, 3]), "mnist": ([0, 2], [0, 2])}
    assert list(group_fronts([{**p, "group": "mnist"} for p in points]).values()) == [([0, 1, 2, 3], [0, 1, 2])]


def test_pareto_front():
    # time, accuracy: the 3rd is slower and worse than the 2nd; the 5th ties the 4th but is slower
    assert pareto_front([(1, 90), (2, 95), (3, 93), (4, 99), (5, 99)]) == [0, 1, 3]


def test_report_command_with_a_real_run(finished_run, tmp_path, capsys, monkeypatch):
    run = tmp_path / "copied-from-another-machine"
    shutil.copytree(finished_run[0], run, ignore=shutil.ignore_patterns("*.ckpt", "report.html", "plots"))
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {run / 'report.html'} (4 figures)" in out
    # Without last.ckpt (deleted once a run is done), the restored epoch is still known: best.ckpt's, as
    # summary.json has it (the page said "the epoch early stopping judged best is unknown").
    assert "last.ckpt is missing" not in out
    assert "It restored the weights of epoch 1" in (run / "report.html").read_text()
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["confusion.png", "curves.png", "misclassified.png",
                                                                 "per_class.png"]
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope'} does not exist; give a run folder" in capsys.readouterr().err
    assert main(["report", str(run / "config.toml")]) == 2
    assert f"{run / 'config.toml'} is not a folder; give a run folder" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # where a blank --out would write
    assert main(["report", str(run), "--out", " "]) == 2  # "" would be the current folder, " " a folder named so
    assert sorted(p.name for p in tmp_path.iterdir()) == [run.name]
    assert "--out needs a folder name" in capsys.readouterr().err
    # compare reads the real run too
    assert main(["compare", str(run), "--plot", str(tmp_path / "c.png")]) == 0
    assert "fast" in capsys.readouterr().out


def test_no_report_leaves_the_report_out_and_a_resume_keeps_it_out(mnist_root, tmp_path, capsys):
    # Seconds of plotting a run, for sweeps and runs whose folder is thrown away; the results stay readable by
    # `mnistlab report` and `compare` (test_predictions.npz).
    run = tmp_path / "run"
    args = ["--data-dir", str(mnist_root), "--model", "cnn", "--threads", "1", "--set", "model.width=0.25",
            "--set", "data.train_limit=500", "--set", "data.val_size=300", "--set", "tensorboard.enabled=false"]
    assert main(["train", *args, "--epochs", "1", "--no-report", "--out", str(run)]) == 0
    assert "report:" not in capsys.readouterr().out  # no "report: RUN/report.html" line
    assert not (run / "report.html").exists() and not (run / "plots").exists()
    assert (run / "test_predictions.npz").is_file() and "report = false" in (run / "config.toml").read_text()
    (run / "report.html").write_text("epoch 1's")  # as if the first part had written one
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0  # the stored setting goes on
    out = capsys.readouterr().out
    assert f"report.html is not brought up to date (train.report = false); `mnistlab report {run}` does it" in out
    assert (run / "report.html").read_text() == "epoch 1's" and not (run / "plots").exists()
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    assert main(["report", str(run)]) == 0 and (run / "plots" / "curves.png").is_file()


def test_models_details_prints_a_keras_style_layer_table(capsys):
    from mnistlab.models import build_model
    from mnistlab.models.summary import count_parameters, layer_table

    assert main(["models", "--details", "lenet5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "model lenet5: input 1x28x28 (mnist), 10 classes"
    assert lines[1].split() == ["layer", "type", "output", "shape", "parameters", "MACs"]
    model = build_model("lenet5", num_classes=10, in_channels=1, image_size=(28, 28))
    rows = layer_table(model)
    body = lines[3 : 3 + len(rows)]
    for row, line in zip(rows, body):
        name, kind, shape, params = line.split()[:4]
        assert (name, kind) == (row["name"], row["type"])
        assert shape == "x".join(map(str, row["output_shape"]))
        assert int(params.replace(",", "")) == row["params"]
    assert body[-1].split()[2] == "10"  # the last layer gives the 10 class scores
    assert lines[-1].startswith(f"total: {count_parameters(model):,} parameters")

    assert main(["models", "--details", "nonet"]) == 2
    assert "unknown model 'nonet'" in capsys.readouterr().err


def test_models_details_shows_a_config_s_layout(capsys, tmp_path):
    # The fast preset's own net (16/32 kernels, crop 2), not the fast builder's defaults.
    assert main(["models", "--details", "--config", "configs/fast.toml"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "model fast: input 1x28x28 (mnist), cropped to 1x24x24 by crop = 2, 10 classes"
    assert lines[3].split()[:3] == ["features.0", "Conv2d", "16x20x20"]
    # A name wins over the config's; --set changes an option; a layout VGG has no default for can be shown.
    assert main(["models", "--details", "vgg", "--set", 'model.channels=[8, "M"]', "--set", "model.hidden=[]"]) == 0
    assert "8x14x14" in capsys.readouterr().out
    assert main(["models", "--set", "model.crop=2"]) == 2
    assert "add --details" in capsys.readouterr().err
    # Any other key was checked, then ignored: the table looked as if it had taken it.
    assert main(["models", "--details", "cnn", "--set", "train.epochs=3"]) == 2
    assert capsys.readouterr().err == ("mnistlab models: error: --set train.epochs: --details shows the model, which "
                                       "only [model] options change (use --dataset for the dataset)\n")


@pytest.mark.parametrize("name", ["fast", "resnet18"])
def test_models_details_for_other_families(name, capsys):
    assert main(["models", "--details", name]) == 0
    out = capsys.readouterr().out
    assert "output shape" in out and "total:" in out
