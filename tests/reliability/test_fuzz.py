"""Random input to every loader: it loads, or raises the project's own error, never a traceback from deep inside.

Property-based (hypothesis). Each test feeds bytes, TOML text, dicts or override
strings to one entry point and accepts two outcomes: a value, or a
:class:`~mnistlab.errors.MnistlabError` (the CLI prints those as one line).
Anything else -- a TypeError from a comparison, an IndexError from a header, a
torch error from a bad tensor -- fails the test with the input that caused it.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mnistlab.config import Config, apply_overrides, config_from_dict, config_to_dict, load_config
from mnistlab.data import load_raw, read_idx
from mnistlab.errors import CheckpointError, ConfigError, DataError, MnistlabError
from mnistlab.models import build_model
from mnistlab.training.checkpoint import FORMAT_VERSION, load_model, read_checkpoint, save_checkpoint, weights_digest

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_CNN = ["model.name=cnn", "model.width=0.25"]


@pytest.fixture(scope="module")
def scratch():
    """One folder for all examples of a module (hypothesis reruns the test body, not the fixture)."""
    path = Path(tempfile.mkdtemp(prefix="mnistlab-fuzz-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------
# checkpoints


@pytest.fixture(scope="module")
def good_ckpt(scratch) -> bytes:
    torch.manual_seed(0)
    model = build_model("cnn", num_classes=10, width=0.25)
    cfg = config_to_dict(apply_overrides(Config(), _CNN))
    payload = {"model_name": "cnn", "config": cfg, "model": model.state_dict(), "num_classes": 10,
               "in_channels": 1, "image_size": [28, 28], "epoch": 1}
    return save_checkpoint(scratch / "good.ckpt", payload).read_bytes()


def _loads_or_refuses(path: Path) -> None:
    try:
        model = load_model(path)
    except MnistlabError:
        return
    assert isinstance(model, torch.nn.Module)


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_are_never_a_checkpoint(scratch, data):
    path = scratch / "random.ckpt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


@FUZZ
@given(data=st.data())
def test_a_damaged_checkpoint_loads_or_is_refused(scratch, good_ckpt, data):
    blob = bytearray(good_ckpt)
    how = data.draw(st.sampled_from(["truncate", "flip", "splice"]))
    if how == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] ^= data.draw(st.integers(1, 255))
    else:
        i = data.draw(st.integers(0, len(blob)))
        blob[i:i] = data.draw(st.binary(min_size=1, max_size=64))
    path = scratch / "damaged.ckpt"
    path.write_bytes(bytes(blob))
    _loads_or_refuses(path)


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True), st.text(max_size=12)
)
_values = st.recursive(
    _scalars | st.builds(torch.zeros, st.integers(0, 3)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_tensors = st.one_of(
    st.builds(lambda n: torch.randn(n), st.integers(0, 5)),
    st.builds(lambda n: torch.arange(n), st.integers(0, 5)),
    st.builds(lambda: torch.tensor(True)),
    st.builds(lambda: torch.zeros(2, 0, 3, dtype=torch.float16)),
)


@pytest.fixture(scope="module")
def good_parts() -> tuple[dict, dict]:
    """The config and weights of a small cnn, as a checkpoint stores them."""
    return config_to_dict(apply_overrides(Config(), _CNN)), build_model("cnn", num_classes=10, width=0.25).state_dict()


@FEW
@given(
    model_name=st.one_of(st.sampled_from(["cnn", "lenet5", "vgg", "no-such-model"]), _values),
    config=st.one_of(st.just("good"), _values),
    state=st.one_of(
        st.just("good"),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(0, 3)), _tensors, max_size=4),
        _values,
    ),
    meta=st.fixed_dictionaries(
        {}, optional={k: _values for k in ("num_classes", "in_channels", "image_size", "classes", "epoch")}
    ),
    version=st.one_of(st.just(FORMAT_VERSION), _values),
)
def test_a_well_formed_file_with_random_contents_loads_or_is_refused(
    scratch, good_parts, model_name, config, state, meta, version
):
    good_cfg, good_state = good_parts
    payload = {
        "format_version": version,
        "model_name": model_name,
        "config": good_cfg if config == "good" else config,
        "model": good_state if isinstance(state, str) and state == "good" else state,
        **meta,
    }
    try:  # a correct digest where one can be computed, so that the checks after it are reached too
        payload["weights_sha256"] = weights_digest(payload["model"])
    except Exception:  # noqa: BLE001 -- the digest of a non-dict or of odd keys: a wrong one will do
        payload["weights_sha256"] = "0" * 64
    path = scratch / "crafted.ckpt"
    torch.save(payload, path)
    _loads_or_refuses(path)


# ---------------------------------------------------------------------------
# IDX files and dataset folders


@FUZZ
@given(data=st.binary(max_size=512), ndim=st.integers(1, 3))
def test_random_bytes_read_as_idx_give_a_tensor_or_a_data_error(scratch, data, ndim):
    path = scratch / "random-idx"
    path.write_bytes(data)
    try:
        tensor = read_idx(path, ndim)
    except DataError:
        return
    assert tensor.dtype == torch.uint8 and tensor.dim() == ndim


@FUZZ
@example(dtype=0x08, dims=[2**32 - 1, 2**32 - 1, 1], ndim=3, extra=0)  # the product overflows int64
@given(
    dtype=st.sampled_from([0x08, 0x08, 0x09, 0x0D]),
    dims=st.lists(st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1)), min_size=0, max_size=4),
    ndim=st.integers(1, 3),
    extra=st.integers(-3, 3),
)
def test_idx_headers_with_any_dims_give_a_tensor_or_a_data_error(scratch, dtype, dims, ndim, extra):
    header = bytes((0, 0, dtype, len(dims))) + b"".join(d.to_bytes(4, "big") for d in dims)
    size = math.prod(dims) if math.prod(dims) < 10_000 else 16
    path = scratch / "header-idx"
    written = max(size + extra, 0)
    path.write_bytes(header + bytes(written))
    try:
        tensor = read_idx(path, ndim)
    except DataError as e:
        if "trailing" in str(e):  # only when there really are more bytes than the header announces
            assert written > math.prod(dims), str(e)
        return
    assert list(tensor.shape) == dims and dtype == 0x08 and len(dims) == ndim and written == math.prod(dims)


def _idx(dims: list[int], fill: int = 0) -> bytes:
    return bytes((0, 0, 8, len(dims))) + b"".join(d.to_bytes(4, "big") for d in dims) + bytes([fill]) * math.prod(dims)


_idx_file = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda n, h, w, fill: _idx([n, h, w], fill), st.integers(0, 3), st.sampled_from([28, 27, 1]),
              st.sampled_from([28, 0]), st.integers(0, 255)),
    st.builds(lambda n, fill: _idx([n], fill), st.integers(0, 3), st.integers(0, 255)),
)


@FEW
@given(files=st.fixed_dictionaries({"train-images-idx3-ubyte": _idx_file, "train-labels-idx1-ubyte": _idx_file}))
def test_a_dataset_folder_of_random_files_loads_or_gives_a_data_error(scratch, files):
    raw = scratch / "KMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (raw / name).write_bytes(data)
    try:
        images, labels = load_raw("kmnist", scratch, train=True, download=False)
    except DataError:
        return
    assert images.shape[1:] == (1, 28, 28) and images.shape[0] == labels.shape[0]
    assert labels.numel() == 0 or int(labels.max()) < 10


# ---------------------------------------------------------------------------
# configs: TOML text, dicts, --set overrides

_SECTIONS = list(config_to_dict(Config()))
_KEYS = sorted({k for keys in config_to_dict(Config()).values() for k in keys})
_toml_scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.floats().map(lambda f: str(f) if not math.isfinite(f) else repr(f)),  # TOML spells them nan, inf, -inf
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters='"\\\n'), max_size=10).map(
        lambda s: f'"{s}"'
    ),
    st.sampled_from(['[8, "M", 16]', "[]", "[0.9, 0.99]", '["M"]', "[1.5]", "1979-05-27", "{ a = 1 }"]),
)


@FUZZ
@given(
    tables=st.lists(
        st.tuples(
            st.sampled_from(_SECTIONS) | st.text("abcxyz_.", min_size=1, max_size=8),
            st.lists(
                st.tuples(st.sampled_from(_KEYS) | st.text("abc_", min_size=1, max_size=6), _toml_scalars), max_size=4
            ),
        ),
        max_size=4,
    )
)
def test_a_toml_config_of_random_sections_keys_and_values_loads_or_gives_a_config_error(scratch, tables):
    text = "".join(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in items) for section, items in tables)
    path = scratch / "random.toml"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(path)
    except ConfigError:
        return
    assert isinstance(cfg, Config)


@FUZZ
@given(text=st.text(max_size=200))
def test_any_text_as_a_config_file_loads_or_gives_a_config_error(scratch, text):
    path = scratch / "text.toml"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    try:
        load_config(path)
    except ConfigError:
        pass


_dict_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=6)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
    max_leaves=6,
)


@FUZZ
@given(
    data=st.dictionaries(
        st.sampled_from(_SECTIONS) | st.text(max_size=6),
        st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6), _dict_values, max_size=4) | _dict_values,
        max_size=4,
    )
)
def test_a_config_dict_of_random_sections_keys_and_values_builds_or_gives_a_config_error(data):
    try:
        cfg = config_from_dict(data)
    except ConfigError:
        return
    assert config_from_dict(config_to_dict(cfg)) == cfg


@FUZZ
@given(
    overrides=st.lists(
        st.one_of(
            st.text(max_size=30),
            st.tuples(
                st.sampled_from(_SECTIONS) | st.text(max_size=5),
                st.sampled_from(_KEYS) | st.text(max_size=5),
                _toml_scalars | st.text(max_size=10),
            ).map(lambda t: f"{t[0]}.{t[1]}={t[2]}"),
        ),
        max_size=4,
    )
)
def test_random_overrides_apply_or_give_a_config_error(overrides):
    try:
        cfg = apply_overrides(Config(), overrides)
    except ConfigError:
        return
    assert isinstance(cfg, Config)
