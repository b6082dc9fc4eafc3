"""A model from train() or build_model() carries what a loaded one does: its zoo name, and (from train()) its
dataset and class names, which predict and export read. They were missing: predict took MNIST's recipe for any
dataset's model and export wrote "Net" and no dataset."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mnistlab import Config, apply_overrides, build_model
from mnistlab.predict import predict_files
from mnistlab.training import train
from mnistlab.training.checkpoint import load_model


def test_build_model_keeps_the_zoo_name():
    assert build_model("cnn", width=0.25).model_name == "cnn"
    assert build_model("lenet5").model_name == "lenet5"


def test_trains_model_is_named_as_the_loaded_one_and_predicts_as_it(mnist_root, tmp_path):
    cfg = apply_overrides(Config(), [f"data.dir={mnist_root}", "data.train_limit=500", "data.val_size=100",
                                     "model.name=cnn", "model.width=0.25", "train.epochs=1"])
    result = train(cfg, out=tmp_path / "run", quiet=True, report=False)
    trained, loaded = result.fit.model, load_model(tmp_path / "run" / "last.ckpt")
    assert (trained.dataset, trained.classes, trained.model_name) == (loaded.dataset, loaded.classes, "cnn")
    assert trained.dataset == "mnist" and trained.classes == [str(i) for i in range(10)]
    img = np.full((40, 40), 255, dtype=np.uint8)
    img[8:32, 18:22] = 0  # a 1, dark on white
    Image.fromarray(img).save(tmp_path / "one.png")
    (ours,), (theirs,) = predict_files(trained, [tmp_path / "one.png"]), predict_files(loaded, [tmp_path / "one.png"])
    assert ours.error is None and ours.top_k == theirs.top_k


def test_export_names_a_built_model_and_the_dataset_train_gave_it(mnist_root, tmp_path, export_extra):
    from mnistlab.export import export_onnx

    cfg = apply_overrides(Config(), [f"data.dir={mnist_root}", "data.train_limit=300", "data.val_size=100",
                                     "model.name=cnn", "model.width=0.25", "train.epochs=1"])
    model = train(cfg, out=tmp_path / "run", quiet=True, report=False).fit.model
    export_onnx(model, tmp_path / "m.onnx", check=False)
    props = {p.key: p.value for p in export_extra.onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert (props["mnistlab.model"], props["mnistlab.dataset"]) == ("cnn", "mnist")  # were "Net" and ""
