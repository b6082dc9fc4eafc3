"""benchmarks/onnx_export.py: a row of its table, on a small model and few images, holds what the README reads."""

from __future__ import annotations

from benchmark_scripts import load_benchmark


def test_a_row_compares_onnx_runtime_with_pytorch_on_the_same_images(tmp_path, export_extra):
    script = load_benchmark("onnx_export")
    row = script.row("lenet5", tmp_path, images=30, batch_size=8, repeats=1)  # 8: batches of 8, 8, 8 and 6
    assert row["model"] == "lenet5" and row["same class"] == "30/30"
    assert float(row["check diff"]) < 1e-4 and row["MB"] > 0.1
    assert float(row["ONNX Runtime / PyTorch"]) > 0  # (the seconds beside it are rounded: no ratio to recompute)
    assert (tmp_path / "lenet5.onnx").is_file()
    assert script.row("vgg", tmp_path, images=4, batch_size=4, repeats=1) is None  # no default layout: skipped
