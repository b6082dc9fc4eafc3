"""Mutation audit 152 of the ``mnistlab`` command (src/mnistlab/cli.py): tests that kill the mutants the rest of
the suite let live, each a slip a user would have met (a flag sent to the wrong setting, a refusal dropped)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mnistlab.errors
from mnistlab.cli import _parser, _train_config, main


@pytest.fixture
def run(one_step_run):
    """A finished run of one training step (read-only)."""
    return one_step_run


def test_each_training_flag_reaches_its_own_setting():
    # Every flag of `train` names one config key (_FLAG_KEYS); one sent to a neighbour's key (--max-steps to
    # train.max_minutes) trained with the wrong limit and left the asked one at its default, without a word.
    args = _parser().parse_args([
        "train", "--model", "lenet", "--epochs", "3", "--max-minutes", "2.5", "--max-steps", "7", "--optimizer",
        "adam", "--lr", "0.01", "--batch-size", "64", "--seed", "5", "--device", "cpu", "--threads", "1",
        "--no-report", "--dataset", "kmnist", "--data-dir", "/nowhere/data", "--freeze", "features",
        "--unfreeze-at", "2",
    ])
    cfg = _train_config(args)
    assert (cfg.model.name, cfg.train.epochs, cfg.train.max_minutes, cfg.train.max_steps) == ("lenet", 3, 2.5, 7)
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.train.batch_size, cfg.train.seed) == ("adam", 0.01, 64, 5)
    assert (cfg.train.device, cfg.train.threads, cfg.train.report) == ("cpu", 1, False)
    assert (cfg.data.dataset, cfg.data.dir) == ("kmnist", "/nowhere/data")
    assert (tuple(cfg.finetune.freeze), cfg.finetune.unfreeze_at) == (("features",), 2)


def test_resume_refuses_a_config_file(tmp_path, capsys):
    # A resumed run uses its stored config; a --config taken with --resume was ignored (or, worse, mixed in).
    # The refusal comes before the run is read: no run is needed to see it.
    config = tmp_path / "other.toml"
    config.write_text("[train]\nepochs = 9\n")
    assert main(["train", "--resume", str(tmp_path / "run"), "--config", str(config)]) == 2
    assert capsys.readouterr().err == ("mnistlab train: error: --config cannot be combined with --resume: the run's "
                                       "stored config is used; change it with flags or --set\n")


def test_a_freeze_list_of_separators_alone_is_refused(tmp_path, capsys):
    # `--freeze ","` (or a variable holding only spaces) names nothing: taken as given, the run froze no parameter
    # while the user asked for some to stay fixed.
    # an empty data folder without downloads: a mutant that let it through fails at once, not over the network
    assert main(["train", "--freeze", " , ", "--epochs", "1", "--data-dir", str(tmp_path),
                 "--set", "data.download=false"]) == 2
    assert capsys.readouterr().err == ("mnistlab train: error: --freeze ' , ' names no parameters; give names, "
                                       "prefixes or globs such as 'features' or 'features.0.*'\n")


def test_a_blank_value_counts_as_empty(tmp_path, monkeypatch, capsys):
    # `report " "` (a variable holding a space): Path(" ") is a new folder named by a space, not the run the user
    # meant; it is refused as the empty name is.
    monkeypatch.chdir(tmp_path)
    assert main(["report", " "]) == 2
    assert capsys.readouterr().err == "mnistlab report: error: RUN needs a run folder, got an empty name\n"
    assert list(tmp_path.iterdir()) == []


def test_models_refuses_an_unknown_dataset(capsys):
    # The models are the same size for every dataset of the family, so an unknown --dataset (a typo of
    # fashion-mnist) went unnoticed: the table was printed, and --details labelled the input with the typo.
    for argv in (["models", "--dataset", "fashion"], ["models", "--details", "--dataset", "fashion"]):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err == ("mnistlab models: error: unknown dataset 'fashion'; choose one of: mnist, fashion-mnist, "
                       "kmnist\n")


def test_predict_hints_at_the_order_when_the_run_comes_after_several_images(tmp_path, monkeypatch, capsys):
    # `predict seven.png eight.png runs/x`: the first image was read as the checkpoint. The hint is due when any
    # of the other words is a run (not only when all are): here one of them is an image.
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.ckpt").write_bytes(b"")  # what makes it look like a run folder; it is never read
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "seven.png", "eight.png", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnistlab predict: error: ") and err.count("\n") == 1, err
    assert err.endswith(" (the checkpoint or run folder comes first: mnistlab predict RUN IMAGE...)\n"), err


def test_export_checks_the_file_unless_told_not_to(run, tmp_path, export_extra, capsys):
    # --no-check skips the ONNX Runtime run (seconds for a big model; the way out where a difference is known);
    # without it the file is checked. Either one taken for the other is a promise of --help broken.
    assert main(["export", str(run), "--out", str(tmp_path / "checked.onnx"), "--json"]) == 0
    check = json.loads(capsys.readouterr().out)["check"]
    assert check is not None and check["same_predictions"] == check["images"]
    assert main(["export", str(run), "--out", str(tmp_path / "unchecked.onnx"), "--no-check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["check"] is None


def test_a_sweep_worker_number_zero_typed_by_hand_is_refused(tmp_path, capsys):
    # The extra processes a sweep starts are numbered 1 to N-1 (the first process is the one the user started):
    # `--worker 0 --workers 2` typed by hand ran as a silent extra process (no table, results or best.toml).
    config = Path(__file__).parents[1] / "configs" / "sweep-example.toml"
    assert main(["sweep", str(config), "--out", str(tmp_path / "s"), "--workers", "2", "--worker", "0",
                 "--data-dir", str(tmp_path), "--set", "data.download=false"]) == 2
    err = capsys.readouterr().err
    assert err == ("mnistlab sweep: error: --worker 0 is for the processes a sweep starts itself; to run the sweep "
                   "in several processes, give --workers N\n")
    assert not (tmp_path / "s").exists()


def test_bench_passes_its_flags_on_and_set_wins_over_data_dir(monkeypatch, tmp_path):
    # As in `train` ("then the flags, then --set, later ones winning"): --set data.dir=... over --data-dir. The
    # timing itself is tests/speed's; here only what reaches it.
    import mnistlab.bench

    seen = {}
    monkeypatch.setattr(mnistlab.bench, "run_bench", lambda cfg, **kw: seen.update(cfg=cfg, **kw))
    assert main(["bench", "--data-dir", str(tmp_path / "flag"), "--set", f"data.dir={tmp_path / 'set'}",
                 "--seeds", "2", "--models", "lenet", "--steps", "3", "--rounds", "4", "--train-limit", "50"]) == 0
    assert seen["cfg"].data.dir == str(tmp_path / "set")
    assert {k: v for k, v in seen.items() if k != "cfg"} == dict(seeds=2, models=["lenet"], steps=3, rounds=4,
                                                                  train_limit=50)


def test_evaluate_and_ensemble_read_the_data_folder_given(run, tmp_path, monkeypatch, capsys):
    # --data-dir replaces the folder the run trained on (moved data, another machine): dropped, the test split was
    # looked for (or downloaded) where the run had it.
    import mnistlab.data
    import mnistlab.training.ensemble

    def stop(data_config):
        raise mnistlab.errors.MnistlabError(f"test split asked of {data_config.dir}")

    monkeypatch.setattr(mnistlab.data, "load_test", stop)
    assert main(["evaluate", str(run), "--data-dir", str(tmp_path / "moved")]) == 2
    assert capsys.readouterr().err == f"mnistlab evaluate: error: test split asked of {tmp_path / 'moved'}\n"
    seen = {}

    def members(runs, **kw):
        seen.update(runs=runs, **kw)
        raise mnistlab.errors.MnistlabError("members read")

    monkeypatch.setattr(mnistlab.training.ensemble, "evaluate_ensemble", members)
    assert main(["ensemble", str(run), str(run), "--ema", "--tta", "2", "--data-dir", str(tmp_path / "moved")]) == 2
    assert capsys.readouterr().err == "mnistlab ensemble: error: members read\n"
    assert (seen["runs"], seen["ema"], seen["data_dir"], seen["tta_shift"]) == ([str(run)] * 2, True,
                                                                               str(tmp_path / "moved"), 2)


def test_evaluate_defaults_to_the_cpu_and_its_help_names_the_runs_data_folder(capsys):
    # The --help texts promise the CPU by default for evaluate (auto would pick a GPU), and, where a checkpoint is
    # read, the data folder of the checkpoint's run before $MNISTLAB_DATA; train has no run to take it from.
    assert _parser().parse_args(["evaluate", "run"]).device == "cpu"
    helps = {}
    for command in ("evaluate", "ensemble", "train", "bench"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        helps[command] = " ".join(capsys.readouterr().out.split())
    for command in ("evaluate", "ensemble"):
        assert "(default: the data folder the checkpoint's run used, else $MNISTLAB_DATA" in helps[command]
    for command in ("train", "bench"):
        assert "(default: $MNISTLAB_DATA, else the user's cache folder)" in helps[command]
