"""Shrinking a `mnistlab bench` run in a test where no line the test checks depends on the size."""

from __future__ import annotations

import dataclasses


def small_matmuls(monkeypatch) -> None:
    """The matmul rates of the thread-scaling line and the roofline on 128 x 128 matrices, once each (not 2048,
    five times: 16 CPU-seconds of a tiny bench): the lines and tables are what is checked, not the rates."""
    from mnistlab import bench

    real = bench.matmul_rates
    monkeypatch.setattr(bench, "matmul_rates", lambda n=2048, repeats=5, *a, **k: real(128, 1, *a, **k))


def first_test_images(monkeypatch, n: int = 1000) -> None:
    """Real MNIST, read and verified whole, but its test split cut to its first ``n`` images, wherever a run loads
    it (bench's public recipe and evaluation, each seed's ``train``): each pass over the 10,000 cost seconds."""
    import mnistlab.data
    import mnistlab.training.run as run
    from mnistlab.data import Split

    real = mnistlab.data.load_data

    def load_data(*args, **kwargs):
        data = real(*args, **kwargs)
        test = data.test
        return dataclasses.replace(data, test=Split(test.images[:n], test.labels[:n], test.indices[:n]))

    monkeypatch.setattr(mnistlab.data, "load_data", load_data)
    monkeypatch.setattr(run, "load_data", load_data)
