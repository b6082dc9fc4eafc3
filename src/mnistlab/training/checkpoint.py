"""Checkpoint I/O: atomic writes, ``weights_only`` reads, a SHA-256 of the weights.

A checkpoint is a ``torch.save``-d dict holding only tensors, numbers, strings,
lists and dicts, so it is read with ``torch.load(weights_only=True)``: a file
that would need to unpickle arbitrary objects (and so could run code) is
refused. ``load_model`` rebuilds the architecture from the model registry and
the stored config, so a checkpoint is a complete model without pickled code.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import shlex
import sys
import threading
import time
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..folders import expand_home

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (supported): tomli is the same parser
    import tomli as tomllib  # type: ignore[no-redef]

FORMAT_VERSION = 1
_REQUIRED = ("format_version", "model_name", "config", "model", "weights_sha256")


def _hash_tensor(h, label: str, tensor: torch.Tensor) -> None:
    """Feed ``label``, the dtype, the shape and the bytes of ``tensor`` to the hash ``h``."""
    t = tensor.detach().to("cpu").contiguous()
    h.update(f"{label}|{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every tensor, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        _hash_tensor(h, name, state_dict[name])
    return h.hexdigest()


def content_digest(payload: dict[str, Any]) -> str:
    """SHA-256 over everything in a checkpoint besides its weights (hashed on their own) and the digests.

    The optimizer's moments, the random state, the callbacks' counters, the epoch: torch's zip reader
    checks no CRC, so a flipped bit there would load and silently steer a resumed run elsewhere.
    Lists and tuples hash alike, dict keys and set items in sorted order, floats by their exact repr.
    """
    h = hashlib.sha256()

    def walk(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            _hash_tensor(h, "T", obj)
        elif isinstance(obj, dict):
            h.update(f"D{len(obj)}|".encode())
            for key in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
                h.update(f"{type(key).__name__}:{key!r}=".encode())
                walk(obj[key])
        elif isinstance(obj, (list, tuple)):
            h.update(f"L{len(obj)}|".encode())
            for item in obj:
                walk(item)
        elif isinstance(obj, (set, frozenset)):  # iteration order (and so repr) varies between processes
            h.update(f"S{len(obj)}|".encode())
            for item in sorted(obj, key=lambda i: (type(i).__name__, repr(i))):
                walk(item)
        else:
            h.update(f"{type(obj).__name__}:{obj!r}|".encode())

    walk({k: v for k, v in payload.items() if k not in _UNHASHED})
    return h.hexdigest()


_UNHASHED = ("model", "weights_sha256", "content_sha256")


_WRITING = threading.RLock()  # see atomic_write; re-entrant, for a ``write`` that itself writes a file


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``.

    A crash or kill at any moment leaves either the old file or the new one,
    never a mix: the rename is atomic, and the data is fsync-ed before it.
    """
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        # The rename would put a regular file in the place of a device or a pipe: /dev/null, as root. A folder
        # is refused by os.replace itself.
        raise OSError(errno.EINVAL, "not a regular file (a device, a pipe or a socket)", str(path))
    suffix = f".tmp-{os.getpid()}"
    # A name of up to 255 bytes is valid: the temporary one keeps as much of it as fits beside its dot and suffix.
    stem = os.fsencode(path.name)[:255 - 1 - len(suffix)]
    tmp = path.with_name(f".{os.fsdecode(stem)}{suffix}")
    # One temporary name per process (a run's lock takeover removes a killed one's ``.*.tmp-PID``), so threads take
    # turns: two writing the same file at once shared it, and one's rename took the other's file from under it
    # ("No such file or directory"), or renamed a file the other was still writing.
    with _WRITING:
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            _replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _replace(tmp: Path, path: Path) -> None:
    """``os.replace``, retried for about a second on Windows, where a file another process has open (a reader
    such as `mnistlab evaluate`, an antivirus scan of the new file) cannot be replaced: PermissionError."""
    for wait in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, None):
        try:
            os.replace(tmp, path)
            return
        except PermissionError:
            if sys.platform != "win32" or wait is None:
                raise
            time.sleep(wait)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (which must hold ``model``: a state_dict) atomically, with format version and digest."""
    path = Path(path)
    if "\x00" in str(path):  # os.open's ValueError ("embedded null byte") came out of the temporary file's cleanup
        raise CheckpointWriteError(f"cannot write checkpoint {str(path)!r}: a path cannot hold a NUL character")
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        raise TypeError("save_checkpoint(path, payload): payload must be a dict holding 'model', the model's "
                        "state_dict(), e.g. {'model': model.state_dict()}")
    _refuse_what_cannot_be_read(payload)
    payload = dict(payload)
    payload["format_version"] = FORMAT_VERSION
    payload["model"] = {k: v.detach().to("cpu") for k, v in payload["model"].items()}
    payload["weights_sha256"] = weights_digest(payload["model"])
    payload["content_sha256"] = content_digest(payload)
    try:
        atomic_write(path, lambda f: torch.save(payload, f))
    except OSError as e:
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {e.strerror or e}") from e
    except RuntimeError as e:  # torch's zip writer turns a full disk into "unexpected pos ..."
        cause = e.__context__ if isinstance(e.__context__, OSError) else None
        reason = (cause.strerror or str(cause)) if cause is not None else " ".join(str(e).split())
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {reason}") from e
    return path


def _without_tensors(obj: Any, memo: dict[int, Any]) -> Any:
    """``obj`` with its tensors as None, inside the containers the weights-only reader takes (of those exact
    types); anything else is kept as it is, so that it is refused as it would be when read."""
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, torch.Tensor):
        return None
    kind = type(obj)
    if kind in (dict, OrderedDict):
        memo[id(obj)] = copy = kind()
        copy.update((key, _without_tensors(value, memo)) for key, value in obj.items())
        return copy
    if kind is list:
        memo[id(obj)] = copy = []
        copy.extend(_without_tensors(item, memo) for item in obj)
        return copy
    if kind in (tuple, set):
        return kind(_without_tensors(item, memo) for item in obj)
    return obj


def _refuse_what_cannot_be_read(payload: dict[str, Any]) -> None:
    """A TypeError, before anything is written, for a payload that read_checkpoint would refuse as one that
    could run code: a NumPy number or a Path saves without complaint, and the file could never be loaded."""
    refusal = weights_only_refusal(_without_tensors(payload, {}))
    if refusal is None:
        return
    keys = [k for k in payload if weights_only_refusal(_without_tensors({k: payload[k]}, {})) is not None]
    where = f"payload[{keys[0]!r}]" if keys else "the payload"
    raise TypeError(f"save_checkpoint: {where} holds what a checkpoint cannot ({refusal}): checkpoints are read "
                    "with torch.load(weights_only=True); keep it to tensors, numbers, strings, lists and dicts "
                    "(float(x) for a NumPy number, str(p) for a path)")


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (a full disk, a folder gone); the ones written before are intact."""


def checkpoint_file(path: str | Path, ema: bool = False) -> Path:
    """A run folder means its best.ckpt (ema.ckpt with ``ema``); a file is itself.

    A run folder without that file is an error, not a reason to fall back on
    last.ckpt: that one may hold a position inside an epoch, never validated.
    """
    if not str(path).strip():  # Path("") is the current folder: not what an empty argument meant
        raise CheckpointError("an empty path names no checkpoint; give a run folder or a .ckpt file")
    path = expand_home(Path(path), "checkpoint", CheckpointError)  # --init-from=~/runs/a
    if not _is_dir(path):
        return path
    name = "ema.ckpt" if ema else "best.ckpt"
    if not (path / name).is_file():
        inside = _runs_inside(path, name)
        if inside:  # `mnistlab ensemble runs/` was "run folder runs has no best.ckpt (the run never finished...)"
            shown = " ".join(shlex.quote(str(r)) for r in inside[:3]) + (" ..." if len(inside) > 3 else "")
            raise CheckpointError(f"{path} is a folder of runs, not a run: name the runs in it ({shown})")
        if ema:
            hint = " (was the run trained with [ema] enabled?)"
        elif (path / "last.ckpt").is_file():
            hint = f" (it stopped before an epoch ended with a finite validation value); {path / 'last.ckpt'} holds where it stopped"
        else:
            hint = " (the run never finished an epoch?); name a .ckpt file instead"
        raise CheckpointError(f"run folder {path} has no {name}{hint}")
    if ema and _ema_turned_off(path):
        raise CheckpointError(
            f"run {path} was resumed with [ema] off (its config.toml says enabled = false): its ema.ckpt is a weight "
            f"average of the epochs before that, not of the run; name the file ({path / name}) to use it anyway"
        )
    return path / name


def _ema_turned_off(run: Path) -> bool:
    """Whether the run folder's config.toml (the config of its last part) has ``[ema] enabled = false``. A
    run that made ema.ckpt had it on; one resumed with it off left that file as it was, no longer updated."""
    config = run / "config.toml"
    try:
        if not config.is_file():  # a FIFO there made read_text wait for a writer for ever
            return False
        stored = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):  # none, or not readable: nothing says so
        return False
    section = stored.get("ema")
    return isinstance(section, dict) and section.get("enabled") is False


def _runs_inside(folder: Path, name: str) -> list[Path]:
    """The folders right under ``folder`` that hold ``name`` (best.ckpt), sorted: runs, where it holds none."""
    try:
        return sorted(d for d in folder.iterdir() if (d / name).is_file())
    except OSError:
        return []


def _is_dir(path: Path) -> bool:
    """``path.is_dir()``, where what stops the path being looked at is a CheckpointError: Python 3.11 raises a
    name too long, or a folder on the way that cannot be searched, as an OSError (a traceback, not a line)."""
    try:
        return path.is_dir()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None


def resume_file(path: str | Path) -> Path:
    """What ``--resume PATH`` reads: a run folder's last.ckpt, or the last.ckpt given.

    The resumed run writes the rest of its files beside the checkpoint, so another file (best.ckpt, a copy of
    last.ckpt under another name) is refused: continuing from it would replace the files of the run in its
    folder, or write a run into a folder that holds none.
    """
    path = expand_home(Path(path), "checkpoint", CheckpointError)  # --resume=~/runs/a
    if not _is_dir(path):
        if path.name != "last.ckpt" and (path.exists() or path.is_symlink()):  # a missing one: read_checkpoint says so
            raise CheckpointError(
                f"{path} is not a last.ckpt: --resume continues a run in its own folder, from that folder's last.ckpt, "
                f"and writes the rest of the run there (from another file it would replace that run's later epochs "
                f"or write a run among other files). Give the run folder (--resume {shlex.quote(str(path.parent))}); "
                f"to continue from a copy of a last.ckpt, put it in an empty folder as last.ckpt and resume that "
                f"folder; to start a new run from this file's weights, use --init-from {shlex.quote(str(path))}"
            )
        return path
    if not (path / "last.ckpt").exists() and not (path / "last.ckpt").is_symlink():
        raise CheckpointError(
            f"run folder {path} has no last.ckpt to resume from: the run stopped before it finished its first "
            f"epoch, so nothing of it can be continued; delete the folder and train again"
        )
    if (path / "last.ckpt").is_dir():  # read_checkpoint would take it for a run folder and look for best.ckpt
        raise CheckpointError(f"{path / 'last.ckpt'} is a folder, not a checkpoint")
    return path / "last.ckpt"


# The lines of torch's weights-only refusal that are its advice, not the cause: a global from a module it
# blocks outright (os.system: "... whose module posix is blocked") comes without the "WeightsUnpickler
# error:" marker, after a first line that suggests loading the file with weights_only=False.
_TORCH_ADVICE = ("Weights only load failed", "Check the documentation", "Re-running `torch.load`")


def _unpickling_reason(e: pickle.UnpicklingError) -> str:
    """The cause in torch's weights-only refusal (what follows "WeightsUnpickler error:", on its line or the
    next; without the marker, its first line that is not advice), without torch's advice on how to allow it."""
    text = str(e)
    _, marker, rest = text.partition("WeightsUnpickler error:")
    lines = [ln.strip() for ln in (rest if marker else text).splitlines() if ln.strip()]
    causes = [ln for ln in lines if not ln.startswith(_TORCH_ADVICE)]
    reason = (causes or lines or [type(e).__name__])[0]
    return reason.split(" Please use")[0].strip().rstrip(".")


# Words in the weights-only unpickler's refusals of an object (a global, a call, a class). Its other
# refusals (an unknown opcode, a string too long, a bad persistent id) mean bytes that are no valid
# pickle: a damaged file, not one crafted to run code.
_CODE_SIGNS = ("global", "reduce", "new object", "can only build")


def _refusal_error(path: Path, e: pickle.UnpicklingError) -> CheckpointError:
    reason = _unpickling_reason(e)
    if any(sign in reason.lower() for sign in _CODE_SIGNS):
        return CheckpointError(
            f"refusing to load {path}: it needs to unpickle objects other than tensors and plain data, "
            f"which could run code ({reason}). mnistlab only reads checkpoints with weights_only=True."
        )
    return CheckpointError(f"{path} is not a readable checkpoint (its pickled data is damaged: {reason})")


def weights_only_refusal(obj: Any) -> str | None:
    """Why ``torch.load(weights_only=True)``, as checkpoints are read, would refuse ``obj``; None if it would not.

    For small objects (a callback's state): it is saved and loaded once in memory.
    """
    buffer = io.BytesIO()
    # torch.serialization's own names: this round trip in memory is no write, and must not fail where
    # torch.save is replaced to fail the writes (the tests of a full disk do that).
    try:
        torch.serialization.save(obj, buffer)
    except (pickle.PicklingError, TypeError, AttributeError) as e:  # a lock, a lambda, a generator: not even saved
        return f"it cannot be saved at all ({type(e).__name__}: {e})"
    buffer.seek(0)
    try:
        torch.serialization.load(buffer, weights_only=True)
    except pickle.UnpicklingError as e:
        return _unpickling_reason(e)
    return None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and verify a checkpoint (a run folder: its best.ckpt); every problem is a CheckpointError naming the file."""
    path = checkpoint_file(path)
    if not path.is_file():
        if path.is_symlink() and not path.exists():
            raise CheckpointError(f"checkpoint {path} is a symbolic link to nothing readable ({os.path.realpath(path)})")
        if path.exists():  # a device (/dev/null) or a pipe: not "does not exist"
            raise CheckpointError(f"checkpoint {path} is not a regular file")
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:  # is_zipfile says False for a file it cannot open: "not a checkpoint" would hide a permission problem
        with path.open("rb"):
            pass
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    try:
        is_zip = zipfile.is_zipfile(path)
    except zipfile.BadZipFile as e:  # is_zipfile lets this through for a damaged zip64 end record: one flipped byte
        raise CheckpointError(f"{path} is not a readable checkpoint (its zip directory is damaged: {e})") from None
    if not is_zip:  # every checkpoint mnistlab writes is torch's zip format
        with path.open("rb") as f:
            legacy = f.read(2) == b"\x80\x02"  # a pickle protocol 2 header: torch.save's format before 1.6
        if legacy:
            raise CheckpointError(f"{path} is a torch checkpoint in the legacy (pre-1.6, non-zip) format, which "
                                  "mnistlab does not read: it is not a mnistlab checkpoint")
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated, or not a torch checkpoint at all)")
    _check_archive(path)
    try:
        with warnings.catch_warnings():  # a sparse tensor is refused below, with a line of ours: not torch's note
            warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refusal_error(path, e) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or not a checkpoint: {e})") from None
    except Exception as e:  # torch raises assorted types on garbage; none may escape as a traceback
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(
            f"{path} holds bare weights (torch.save(model.state_dict())), not a mnistlab checkpoint: it does not say "
            "which model they are for; build that model with mnistlab.build_model(...) and load them with "
            "mnistlab.training.load_weights(model, torch.load(path, weights_only=True))"
        )
    if not isinstance(payload, dict) or any(k not in payload for k in _REQUIRED):
        missing = [k for k in _REQUIRED if k not in payload] if isinstance(payload, dict) else None
        what = f"it lacks {', '.join(missing)}" if missing else f"it holds a {type(payload).__name__}, not a dict"
        raise CheckpointError(f"{path} is not a mnistlab checkpoint ({what}); give a .ckpt file that mnistlab "
                              "wrote, or its run folder")
    version = payload["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{path} is not a mnistlab checkpoint (its format version is {version!r})")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}, newer than this mnistlab reads ({FORMAT_VERSION}); "
            "upgrade mnistlab to load it"
        )
    _check_structure(path, payload, path.stat().st_size)
    state = payload["model"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path} is not a mnistlab checkpoint (its weights are not a dict of named tensors)")
    config = payload["config"]
    if not isinstance(config, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) and all(isinstance(key, str) for key in v) for k, v in config.items()
    ):
        raise CheckpointError(f"{path} is not a mnistlab checkpoint (its config is not a table of sections)")
    try:
        digest = weights_digest(state)
    except (RuntimeError, TypeError, ValueError) as e:  # a tensor that cannot be read as bytes (sparse, meta, ...)
        raise CheckpointError(f"{path} is not a mnistlab checkpoint (its weights cannot be hashed: {e})") from None
    if digest != payload["weights_sha256"]:
        raise CheckpointError(f"{path} is corrupted: the SHA-256 of its weights does not match the stored one")
    # Checkpoints from before the key have only the weights' digest.
    if "content_sha256" in payload and _content_digest_of(path, payload) != payload["content_sha256"]:
        raise CheckpointError(f"{path} is corrupted: the SHA-256 of its training state (optimizer, random state, "
                              "progress) does not match the stored one")
    return payload


def _check_archive(path: Path) -> None:
    """Refuse a zip whose entries would unpack to more than the file holds.

    torch.save stores its entries uncompressed, once each; torch.load also inflates compressed ones, and reads
    entries that share bytes, so a file of 300 KB could unpack to a 200 MB tensor (a zip bomb).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    # NotImplementedError: a flipped byte in an entry's "version needed to extract" ("zip file version 24.2")
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (its zip directory is damaged: {e})") from None
    packed = [e.filename for e in entries if e.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise CheckpointError(f"{path} is not a checkpoint torch.save wrote: its entry {packed[0]} is compressed "
                              "(torch.save stores them as they are); save it again with torch.save")
    declared = sum(e.file_size for e in entries)
    if declared > path.stat().st_size:
        raise CheckpointError(f"{path} is not a checkpoint torch.save wrote: its entries declare {declared} bytes, "
                              f"more than the file's {path.stat().st_size} (entries that overlap)")


# Bounds on what a checkpoint holds besides its tensors' bytes. mnistlab's payloads are a few levels deep, with
# some thousands of values at most (a long run's history). A crafted pickle can hold a list that contains itself,
# or one list twice in each of 40 levels: 2**40 values to hash, from a file of 100 bytes.
_MAX_DEPTH, _MAX_VALUES = 32, 1_000_000


def _tensor_problem(t: torch.Tensor) -> str | None:
    """Why the tensor ``t`` is none that mnistlab writes, or None. Each written tensor has its own bytes in the
    file; a view that repeats its elements (stride 0) makes a tensor of gigabytes from a few bytes, which
    hashing it would allocate."""
    if t.layout != torch.strided:
        return f"a {str(t.layout).removeprefix('torch.')} tensor"
    if t.device.type == "meta":
        return "a tensor without data (on the meta device)"
    if t.is_quantized or t.numel() == 0:
        return None
    try:
        room = t.untyped_storage().nbytes() - t.storage_offset() * t.element_size()
    except (RuntimeError, NotImplementedError, TypeError):
        return "a tensor whose data cannot be read"
    need = t.numel() * t.element_size()
    if need > room:
        return f"a tensor of shape {list(t.shape)} ({need} bytes) over {max(room, 0)} bytes of data (a repeating view)"
    return None


def _check_structure(path: Path, payload: Any, file_bytes: int) -> None:
    """Refuse what would exhaust memory, time or the stack when it is hashed or read: see ``_MAX_DEPTH``,
    ``_MAX_VALUES`` and ``_tensor_problem``. Tensors reached through shared references count each time, as
    hashing reads them each time; a file holds each storage once, so a total of 4 times the file is refused."""
    seen = {"values": 0, "bytes": 0}
    most_bytes = 4 * file_bytes + (1 << 20)

    def refuse(what: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a mnistlab checkpoint ({what}): damaged, or crafted to exhaust "
                               "memory or time; use a checkpoint mnistlab wrote")

    def walk(obj: Any, depth: int) -> None:
        seen["values"] += 1
        if seen["values"] > _MAX_VALUES:
            raise refuse(f"it holds more than {_MAX_VALUES:,} values, or the same ones many times over")
        if depth > _MAX_DEPTH:
            raise refuse(f"its data is nested more than {_MAX_DEPTH} levels deep, or holds itself")
        if isinstance(obj, torch.Tensor):
            problem = _tensor_problem(obj)
            if problem:
                raise refuse(f"it holds {problem}")
            seen["bytes"] += obj.numel() * obj.element_size()
            if seen["bytes"] > most_bytes:
                raise refuse(f"its tensors take {seen['bytes']:,} bytes or more, from a file of {file_bytes:,}")
        elif isinstance(obj, dict):
            for key, value in obj.items():
                walk(key, depth + 1)
                walk(value, depth + 1)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            for item in obj:
                walk(item, depth + 1)

    walk(payload, 0)


def _content_digest_of(path: Path, payload: dict[str, Any]) -> str:
    try:  # _check_structure has bounded it; a value that cannot be hashed is still one line, not a traceback
        return content_digest(payload)
    except (RuntimeError, TypeError, ValueError, NotImplementedError, RecursionError) as e:
        raise CheckpointError(f"{path} is not a mnistlab checkpoint (its training state cannot be hashed: "
                              f"{type(e).__name__}: {e})") from None


# Bounds on what a checkpoint may ask model_from_checkpoint to build: a crafted file must not
# make it allocate a model for gigapixel images. The MNIST family is 1 x 28 x 28, 10 classes.
_MAX_IMAGE_SIDE, _MAX_CHANNELS, _MAX_CLASSES = 1024, 4, 100_000


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _structure(payload: dict[str, Any], source: str | Path = "the checkpoint") -> tuple[int, int, Any]:
    """The checkpoint's num_classes, in_channels and image_size, each checked: check_fits_data compares them
    with the data before the model is built (an image_size of 28 made its list() a TypeError)."""
    num_classes, in_channels, size = (payload.get(k) for k in ("num_classes", "in_channels", "image_size"))
    if not (
        _int_in(num_classes, 1, _MAX_CLASSES)
        and _int_in(in_channels, 1, _MAX_CHANNELS)
        and isinstance(size, (list, tuple))
        and len(size) == 2
        and all(_int_in(s, 1, _MAX_IMAGE_SIDE) for s in size)
    ):
        raise CheckpointError(
            f"{source} lacks what is needed to rebuild its model: num_classes, in_channels and image_size (two "
            f"sides) must be positive integers, got {num_classes!r}, {in_channels!r} and {size!r}"
        )
    return num_classes, in_channels, size


def stored_config(payload: dict[str, Any], source: str | Path = "the checkpoint"):
    """The Config a checkpoint was trained under; one that is not valid is a CheckpointError naming ``source``
    (the file), not a config error that reads as if the user's own config or flags were wrong."""
    from ..config import config_from_dict, stored_before_own_defaults
    from ..errors import ConfigError

    try:
        return config_from_dict(stored_before_own_defaults(payload["config"]))
    except ConfigError as e:
        raise CheckpointError(f"the config stored in {source} is not valid: {e}") from None


def check_fits_data(payload: dict[str, Any], data, path: str | Path) -> None:
    """A CheckpointError when the checkpoint's model takes other images, or tells apart another number of
    classes, than the test split of ``data`` (a DataBundle or ScoringSet) holds: its forward pass would fail on
    them, or score labels it has no output for."""
    def shape(classes: Any, channels: Any, size: Any) -> str:
        side = "x".join(map(str, size)) if isinstance(size, (list, tuple)) else repr(size)
        return f"{classes} classes on {side} images of {channels} channel{'s' * (channels != 1)}"

    num_classes, in_channels, size = _structure(payload, path)
    mine = (num_classes, in_channels, list(size))
    images = data.test.images  # N x C x H x W
    theirs = (data.num_classes, int(images.shape[1]), [int(images.shape[2]), int(images.shape[3])])
    if mine != theirs:
        raise CheckpointError(f"{path} holds a model of {shape(*mine)}, but {data.dataset}'s test split has "
                              f"{shape(*theirs)}")


def model_from_checkpoint(payload: dict[str, Any], source: str | Path = "the checkpoint"):
    """Rebuild the model a checkpoint payload describes and load its weights; ``source`` (the file) is named in
    the errors."""
    from ..models import build_model

    num_classes, in_channels, size, options = _stored_model(payload, source)
    _refuse_a_larger_model(payload["model_name"], payload["model"], num_classes, in_channels, size, options)
    try:
        # Its initial weights are replaced by the stored ones: drawn from a fork of the global RNG, so that a
        # caller's random stream (a notebook that loads a model for predict) does not move.
        with torch.random.fork_rng(devices=[]):
            model = build_model(
                payload["model_name"],
                num_classes=num_classes,
                in_channels=in_channels,
                image_size=tuple(size),
                **options,
            )
    # A model the stored options cannot build is a bad checkpoint, whatever the builder raised.
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(
            f"the checkpoint describes a model that cannot be built ({type(e).__name__}: {e})"
        ) from None
    load_weights(model, payload["model"], source=payload["model_name"])
    from .fit import use_channels_last  # here: fit imports this module

    if use_channels_last(None, model, torch.device("cpu")):  # 2-4x faster inference for the small CNNs
        model = model.to(memory_format=torch.channels_last)
    classes = payload.get("classes")
    ok = isinstance(classes, (list, tuple)) and len(classes) == num_classes
    model.classes = [str(c) for c in classes] if ok else [str(i) for i in range(num_classes)]
    model.dataset = str(payload.get("dataset", ""))
    return model


def _stored_model(payload: dict[str, Any], source: str | Path = "the checkpoint") -> tuple[int, int, Any, dict]:
    """The num_classes, in_channels, image_size and [model] options a checkpoint's model is built with, each
    checked."""
    num_classes, in_channels, size = _structure(payload, source)
    cfg = stored_config(payload, source)
    if not isinstance(payload["model_name"], str):
        raise CheckpointError(f"the checkpoint's model name is not a string: {payload['model_name']!r}")
    options = cfg.model.options()
    if stored_crop(payload["model"]):
        # The weights know their crop even where the stored config does not (a model built with
        # build_model(..., crop=2) and trained through the Python API under a config without it).
        options["crop"] = stored_crop(payload["model"])
    return num_classes, in_channels, size, options


def refuse_a_larger_model(payload: dict[str, Any], source: str | Path = "the checkpoint") -> None:
    """A CheckpointError where the model the checkpoint's config describes holds more values than its weights
    (see ``_refuse_a_larger_model``); a config that cannot be read is left to the code that builds the model
    (``--init-from`` with ``--config`` builds the user's)."""
    try:
        spec = _stored_model(payload, source)
    except CheckpointError:
        return
    _refuse_a_larger_model(payload["model_name"], payload["model"], *spec)


def _refuse_a_larger_model(name: str, state: dict[str, torch.Tensor], num_classes: int, in_channels: int,
                           size: Any, options: dict[str, Any]) -> None:
    """Refuse, before it is built, a model with more values than the checkpoint's weights: they cannot fit it.

    Building it first would allocate and initialize it: a few KB of crafted sizes (a cnn on 1024 x 1024
    images has 210 billion weights) would take all memory before load_weights said the weights do not fit.
    It is counted on the meta device, which allocates nothing.
    """
    from ..models._registry import _get, meta_model

    try:
        shapes = meta_model(_get(name), num_classes=num_classes, in_channels=in_channels, image_size=tuple(size),
                            **{k: v for k, v in options.items() if v is not None}).state_dict()
    except Exception:  # noqa: BLE001 - a model that cannot be built: build_model says why, in its own words
        return
    needed, held = (sum(t.numel() for t in d.values()) for d in (shapes, state))
    if needed > held:
        raise CheckpointError(
            f"the weights from {name} do not fit the model its config describes (another architecture or class "
            f"count?): that model has {needed:,} values, the checkpoint's weights {held:,}"
        )


def stored_crop(state: dict[str, torch.Tensor]) -> int:
    """The ``model.crop`` a state dict was made with: its ``crop_pixels`` buffer, else 0 (no crop)."""
    value = state.get("crop_pixels")
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or value.is_complex():
        return 0
    # A state dict converted as a whole ({k: v.double() for ...}) holds a crop of 2 as 2.0: it was read as no crop,
    # and loading it into its own crop=2 model was refused with the advice "set model.crop = 0".
    number = float(value)
    return int(number) if number.is_integer() else 0


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint",
                 check_values: bool = True) -> None:
    """``load_state_dict`` with an error that says which shapes or names do not fit.

    ``check_values`` also refuses integer tensors for floating-point weights and NaN or infinite
    values (counted in the model's dtype, where larger float64 values become infinite): weights read
    from a file must be a usable model (a callback's ``set_weights`` may load any).
    """
    own = model.state_dict()
    theirs, ours = stored_crop(state), stored_crop(own)
    if theirs < 0:
        raise CheckpointError(f"the weights from {source} record a crop of {theirs} pixels a side: damaged, or not "
                              "written by mnistlab")
    if theirs != ours:
        raise CheckpointError(
            f"the weights from {source} were trained on images cropped by {theirs} pixels a side (model.crop = "
            f"{theirs}), but this model crops {ours} (model.crop = {ours}): the same weights would see other pixels; "
            f"set model.crop = {theirs}"
        )
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shapes differ: " + "; ".join(wrong[:3]) + (" ..." if len(wrong) > 3 else ""))
        if missing:
            parts.append("missing: " + ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else ""))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected[:3]) + (" ..." if len(unexpected) > 3 else ""))
        raise CheckpointError(
            f"the weights from {source} do not fit this model (another architecture or class count?): " + "; ".join(parts)
        )
    if not check_values:
        model.load_state_dict(state)
        return
    ints = [k for k in own if own[k].is_floating_point() and not state[k].is_floating_point()]
    if ints:
        raise CheckpointError(f"the weights from {source} are not floating point ({ints[0]} is {state[ints[0]].dtype}):"
                              " not weights any training wrote")
    bad = [k for k in own if state[k].is_floating_point() and not _finite_as_loaded(state[k], own[k])]
    if bad:
        kind = str(own[bad[0]].dtype).removeprefix("torch.")  # float64 values of 1e300 are inf in a float32 model
        raise CheckpointError(f"the weights from {source} hold NaN or infinite values ({', '.join(bad[:3])}"
                              f"{' ...' if len(bad) > 3 else ''}) as the model's {kind}: a diverged or damaged "
                              "model, which would only predict noise")
    model.load_state_dict(state)


def _finite_as_loaded(value: torch.Tensor, like: torch.Tensor) -> bool:
    """Whether ``value`` is finite once copied into the dtype of ``like``, as load_state_dict copies it: float64
    weights of 1e300 are finite, and infinite in a float32 model."""
    if like.is_floating_point():
        value = value.to(like.dtype)
    return bool(torch.isfinite(value).all())


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Load a complete model from a checkpoint (or a run folder) in eval mode, on ``device`` ("cpu", a
    torch.device, or train.device's "auto", "cuda", "mps": one that is not here is a ConfigError).

    >>> model = load_model("runs/my-run/best.ckpt")       # doctest: +SKIP
    >>> model.classes[model(images).argmax(1)[0]]          # doctest: +SKIP
    """
    from .fit import resolve_device  # here: fit imports this module

    # train.device's names, as load_data takes them: "auto" and "gpu" were torch's "Expected one of cpu, cuda,
    # ...", and "cuda" on a machine without one a traceback from torch's CUDA init, after the file was read
    if isinstance(device, (str, torch.device)):
        device = resolve_device(device, "load_model(device)")
    if isinstance(path, torch.nn.Module):  # load_model(model): a TypeError from inside pathlib
        raise TypeError("load_model() takes a checkpoint's path or a run folder, got a model (it is loaded already)")
    file = checkpoint_file(path)
    model = model_from_checkpoint(read_checkpoint(file), file)
    return model.to(device).eval()
