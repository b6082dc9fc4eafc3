"""`mnistlab evaluate --device`: where the model runs (cpu by default; auto takes a GPU where there is one)."""

import json

from mnistlab.cli import main


def test_evaluate_on_auto_gives_the_cpus_numbers_here_and_a_missing_gpu_is_one_line(digit_run, mnist_root, capsys):
    assert main(["evaluate", str(digit_run), "--data-dir", str(mnist_root), "--json"]) == 0
    on_cpu = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(digit_run), "--data-dir", str(mnist_root), "--json", "--device", "auto"]) == 0
    on_auto = json.loads(capsys.readouterr().out)
    assert on_auto["test_accuracy"] == on_cpu["test_accuracy"] and on_auto["dataset"] == "mnist"
    import torch

    if not torch.cuda.is_available():
        assert main(["evaluate", str(digit_run), "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert err == "mnistlab evaluate: error: --device = 'cuda' but no CUDA device is available; use 'auto' or " \
                      "'cpu'\n"
