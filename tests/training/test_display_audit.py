"""The per-epoch table stays in its columns whatever the numbers (a diverging run's, a long run's)."""

import io

from mnistlab.training.display import Display


def row(**changes):
    return {"epoch": 1, "train_loss": 0.31, "train_accuracy": 0.91, "val_loss": 0.22, "val_accuracy": 0.94,
            "lr": 1e-3, "seconds": 3.2, **changes}


def test_huge_finite_losses_and_long_epochs_keep_every_column_in_line():
    # `--optimizer sgd --lr 5` on lenet: an epoch ends with a training loss of 3.5e13 and a validation loss of
    # 4.8e15, both finite; "{:>10.4f}" made them 19 and 21 characters and pushed the later columns out of line.
    out = io.StringIO()
    d = Display(out=out)
    d.epoch_row(row())
    d.epoch_row(row(epoch=2, train_loss=34716385702260.15, val_loss=4805702356187270.0, lr=5.0))
    d.epoch_row(row(epoch=999, train_loss=-1.0794500505019023e23, val_loss=float("nan"), seconds=123456.7))
    d.epoch_row(row(epoch=1000, val_loss=float("inf")))
    header, *lines = out.getvalue().splitlines()
    ends = [i + 1 for i, (a, b) in enumerate(zip(header, header[1:] + " ")) if a != " " and b == " "]
    for line in lines:  # the header's columns end where each value ends
        assert len(line) == len(header), line
        assert [i + 1 for i, (a, b) in enumerate(zip(line, line[1:] + " ")) if a != " " and b == " "] == ends, line
    assert lines[1].split()[1:4:2] == ["3.4716e+13", "4.806e+15"]
    assert lines[2].split()[1] == "-1.079e+23" and lines[2].split()[3] == "nan" and lines[2].split()[-1] == "1.2e+05"
    assert lines[3].split()[0] == "1000"
