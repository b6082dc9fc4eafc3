"""MNIST-family datasets: find (or download), verify and load them as tensors.

The raw files are the four uncompressed IDX files in torchvision's layout,
``<root>/<Folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``, so a folder
that torchvision already filled works as it is. Every load checks the IDX
headers and sizes strictly, that no file holds more than its split's published
set (a swapped train and test split), the MD5 of each file where it is known
(and, where not, that it is not one of MNIST's files and that it is what the
published archive beside it unpacks to), the label range and that images and
labels agree; a failed check is a
:class:`~mnistlab.errors.DataError` that names the file and says how to fix it.

:func:`load_data` turns a :class:`~mnistlab.config.DataConfig` into a
:class:`DataBundle`: train / validation / test splits as uint8 tensors on the
device (converted to floats batch by batch, see :mod:`mnistlab.data.batching`),
plus what a model needs to know (classes, image size, mean and std).

>>> from mnistlab.config import DataConfig
>>> data = load_data(DataConfig(val_size=5000, train_limit=2000), device="cpu")  # doctest: +SKIP
>>> len(data.train), len(data.val), len(data.test), data.image_size              # doctest: +SKIP
(2000, 5000, 10000, (28, 28))
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import gzip
import hashlib
import http.client
import math
import os
import shutil
import ssl
import struct
import sys
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from ..config import DataConfig
from ..errors import ConfigError, DataError
from ..folders import NO_HOME, expand_home, missing_folders, remove_empty

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "Split",
    "DataBundle",
    "resolve_data_dir",
    "read_idx",
    "load_raw",
    "split_indices",
    "channel_stats",
    "load_data",
    "ScoringSet",
    "load_test",
    "quiet_downloads",
]


@dataclass(frozen=True)
class DatasetSpec:
    """What mnistlab knows about one dataset of the MNIST family."""

    name: str  # the name in configs (data.dataset)
    folder: str  # torchvision's folder under the root; torchvision names it after the class, so also the class name
    classes: tuple[str, ...]  # class names, indexed by label
    md5: Mapping[str, str | None]  # uncompressed raw file name -> MD5 (None: not known, see DATASETS)
    image_size: tuple[int, int] = (28, 28)  # (H, W) of every image
    in_channels: int = 1  # grayscale
    # Images (and labels) in the published training and test sets: a file holding more is not this split's (the
    # train-* and t10k-* files swapped, say), which the datasets without known MD5s cannot tell otherwise. Fewer
    # pass: a copy cut short on purpose (the tests' small ones) stays usable.
    split_sizes: tuple[int, int] = (60_000, 10_000)

    @property
    def torchvision_class(self) -> Any:
        """The ``torchvision.datasets`` class of this dataset: its ``mirrors`` and ``resources`` (archive names and
        their published MD5s) are where _download fetches from.

        Imported on first use: ``import torchvision`` costs about a second (it
        pulls in torch._dynamo), which a run on files that are already present
        should not pay.
        """
        import torchvision.datasets

        return getattr(torchvision.datasets, self.folder)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def files(self, train: bool) -> tuple[str, str]:
        """The (images, labels) raw file names of the training or test split."""
        prefix = "train" if train else "t10k"
        return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"

    def raw_dir(self, root: str | Path) -> Path:
        return Path(root) / self.folder / "raw"

    def split_size(self, train: bool) -> int:
        """How many images (and labels) the published training or test set has."""
        return self.split_sizes[0 if train else 1]


_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        folder="MNIST",
        classes=tuple(str(d) for d in range(10)),
        # The published MD5s of the original uncompressed files (also in /work/shared/data/README.md).
        md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
    ),
    # For Fashion-MNIST and KMNIST we do not know the MD5s of the *uncompressed* files
    # with certainty, so none are invented here. Those files are checked by the published
    # MD5 of each .gz archive when they are downloaded, and on every load by the strict IDX
    # header and size checks, label range and count checks (no more than the published split: see split_sizes),
    # that none is MNIST's file, and, while the published archive lies beside one, against that archive's CRC-32
    # and size.
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        folder="FashionMNIST",
        classes=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
        ),
        md5=dict.fromkeys(_FILES),
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        folder="KMNIST",
        # Romanized names of the ten hiragana (Kuzushiji-MNIST's classmap), as torchvision lists them.
        classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        md5=dict.fromkeys(_FILES),
    ),
}


def _spec(dataset: str) -> DatasetSpec:
    try:
        return DATASETS[dataset]
    except KeyError:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}") from None


# ---------------------------------------------------------------------------
# where the files live


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """The data root: ``data_dir`` if given, else ``$MNISTLAB_DATA``, else the user's cache folder.

    The cache folder is ``$XDG_CACHE_HOME/mnistlab`` or ``~/.cache/mnistlab`` on Linux,
    ``~/Library/Caches/mnistlab`` on macOS and ``%LOCALAPPDATA%\\mnistlab`` on Windows.

    >>> resolve_data_dir("/data")
    PosixPath('/data')
    """
    if data_dir is not None and str(data_dir) != "":
        return _data_folder(data_dir, "data.dir")
    env = os.environ.get("MNISTLAB_DATA")
    if env:
        return _data_folder(env, "$MNISTLAB_DATA")
    try:
        return _user_cache_dir() / "mnistlab"
    except RuntimeError:  # Path.home(): see folders.NO_HOME
        raise DataError(f"the default data folder is in the user's cache folder (~/.cache/mnistlab), but {NO_HOME}; "
                        "pass --data-dir (or set data.dir or MNISTLAB_DATA) to the data folder") from None


def _data_folder(folder: str | os.PathLike[str], what: str) -> Path:
    """``folder`` (the setting ``what``) as a Path with ``~`` expanded, or a DataError saying why it cannot be one."""
    # A NUL (TOML's "\u0000") is in no file name: os.stat's ValueError ("embedded null byte") came out as a
    # traceback from the missing-file error's look around the folder
    if "\0" in os.fspath(folder):
        raise DataError(f"{what} {os.fspath(folder)!r} holds a NUL character (\\0), which no file or folder name can "
                        "hold; give the data folder's path")
    return expand_home(Path(folder), what, DataError)


def _user_cache_dir() -> Path:
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        return Path(local) if local else Path.home() / "AppData" / "Local"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says a relative path in $XDG_CACHE_HOME is invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg)
    return Path.home() / ".cache"


# ---------------------------------------------------------------------------
# IDX files


# 20x the largest file of the MNIST family (47 MB of training images): a larger one is not a data file,
# and reading it whole (to check its header) would first allocate all of it
_MAX_IDX_BYTES = 1 << 30


def _read_bytes(path: Path) -> bytearray:
    """The whole file in a writable buffer (so torch.from_numpy can share it without a copy or a warning)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > _MAX_IDX_BYTES:
                raise DataError(f"{path} is {size:,} bytes, more than any IDX file of these datasets (at most "
                                f"{_MAX_IDX_BYTES:,}): it is not a data file, or a damaged one")
            buf = bytearray(size)
            got = f.readinto(buf)
    except PermissionError as e:  # a copy made by another user, with its mode: the error said no more than this
        raise DataError(f"cannot read {path}: {e.strerror or e}; make it readable for this user (chmod a+r), or "
                        "pass --data-dir (or set data.dir) to a copy this user may read") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    del buf[got:]  # in case the file shrank between fstat and read
    return buf


def _parse_idx(buf: bytearray, path: Path, expected_ndim: int) -> torch.Tensor:
    size = len(buf)
    if size < 4:
        raise DataError(f"{path} is truncated: expected at least 4 bytes of IDX header, found {size}")
    magic = bytes(buf[:4])
    want = bytes((0, 0, 0x08, expected_ndim))
    if magic[:3] != want[:3]:
        # gunzip itself refuses a name without .gz ("unknown suffix -- ignored"): the hint says what works
        hint = (f" (it looks gzip-compressed: unpack it, e.g. in its folder: gzip -dc {path.name} > {path.name}.new && "
                f"mv {path.name}.new {path.name})") if magic[:2] == b"\x1f\x8b" else ""
        raise DataError(
            f"{path} is not an IDX file of unsigned bytes: its magic number is {magic.hex(' ')}, "
            f"expected {want.hex(' ')}{hint}"
        )
    ndim = magic[3]
    if ndim != expected_ndim:
        raise DataError(f"{path} has {ndim} dimension(s) in its IDX header, expected {expected_ndim}")
    header = 4 + 4 * ndim
    if size < header:
        raise DataError(f"{path} is truncated: expected {header} bytes of IDX header, found {size}")
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims)  # Python ints: np.prod of large dims would overflow int64
    found = size - header
    shape = " x ".join(map(str, dims))
    if found < expected:
        raise DataError(
            f"{path} is truncated: its header announces {shape} values, so expected {expected} bytes of data, "
            f"found {found}"
        )
    if found > expected:
        raise DataError(
            f"{path} has {found - expected} trailing byte(s) after the {expected} bytes of data "
            f"its header announces ({shape})"
        )
    try:
        array = np.frombuffer(buf, dtype=np.uint8, count=expected, offset=header).reshape(dims)
    except ValueError:  # a 0 beside dims whose product passes 2**63 (0 x 4294967295 x 4294967295): NumPy's limit
        raise DataError(f"{path} has a damaged IDX header: it announces {shape} values, a shape no array can "
                        "have") from None
    return torch.from_numpy(array)


def read_idx(path: str | os.PathLike[str], expected_ndim: int) -> torch.Tensor:
    """Read an IDX file of unsigned bytes, strictly, into a uint8 tensor of the dims in its header.

    The file must be: magic ``00 00 08 <ndim>`` with ``ndim == expected_ndim``,
    ``ndim`` big-endian uint32 dims, then exactly ``prod(dims)`` bytes. Anything
    else raises a :class:`DataError` naming the file and what is wrong.

    >>> read_idx("MNIST/raw/t10k-labels-idx1-ubyte", 1).shape   # doctest: +SKIP
    torch.Size([10000])
    """
    path = Path(path)
    return _parse_idx(_read_bytes(path), path, expected_ndim)


# ---------------------------------------------------------------------------
# raw files -> verified tensors


def _missing_error(spec: DatasetSpec, raw_dir: Path, reason: str, *, train: bool, training: bool,
                   download_on: bool = False, local: str | None = None) -> DataError:
    """The files of split ``train`` are missing. ``training``: for a training run, which reads both splits (it
    tests at the end); else only the test split is read (evaluate, predict), and only its files are asked for.
    ``local``: what went wrong on this machine (a full disk, an unwritable folder), not on the network."""
    wanted = _FILES if training else spec.files(False)
    absent = [name for name in wanted if not (raw_dir / name).is_file()]
    missing = [name + (" (a folder is there)" if (raw_dir / name).is_dir() else "")
               for name in absent] or ["nothing (but the download failed)"]
    if local is not None:
        download = f"(2) let the download succeed: data.download is on; {local}, and run again"
    elif download_on:
        download = "(2) let the download succeed: data.download is on; connect to the network and run again"
    elif not training:  # evaluate and predict follow the run's data.download, and have no flag to change it
        download = None
    else:  # the download fetches only this split's missing files (see _download): what it finds of them
        needed = [name for name in spec.files(train) if not (raw_dir / name).is_file()]
        found = [name + ".gz" for name in needed if (raw_dir / (name + ".gz")).is_file()]
        mismatched = _mismatched(raw_dir, _archives(spec, needed)) if found else []  # no torchvision import if none
        good = [name for name in found if name not in mismatched]
        if mismatched:
            download = (f"(2) mind the archives found there ({', '.join(mismatched)}): they do not have the MD5 "
                        f"torchvision publishes, so data.download=true would leave them in place unused; "
                        f"{_fix_mismatched(raw_dir)}")
        elif good and len(good) == len(needed):
            download = (f"(2) set data.download=true: it unpacks the archives found there ({', '.join(good)}) "
                        "after checking their MD5, with no network")
        elif good:
            download = (f"(2) connect to the network and set data.download=true: it checks and unpacks the archives "
                        f"found there ({', '.join(good)}) and fetches the others")
        else:
            download = "(2) allow the download: connect to the network and set data.download=true"
    files = (f"put the {'four' if training else 'two test-split'} uncompressed IDX files ({', '.join(wanted)}) "
             f"in {raw_dir}{'' if training else ' (the training files are needed only to train)'}, or pass "
             f"--data-dir (or set MNISTLAB_DATA) to a folder that has them under {spec.folder}/raw/")
    elsewhere = _found_elsewhere(spec, raw_dir, absent)
    return DataError(f"{spec.name}: {reason}; missing {', '.join(missing)} in {raw_dir}{elsewhere}. To fix it, "
                     + (f"either (1) {files}; or {download}." if download else f"{files}."))


def _misplaced(spec: DatasetSpec, root: Path, names: tuple[str, ...]) -> str | None:
    """Why the files ``names`` of ``root`` cannot be where they are looked for, where that is certain: data.dir
    names the dataset's own folder, its raw/ folder or a file in it (the files are in that layout one to three
    levels up), or one of ``names`` is a link to nothing. Said before any download, which would fetch a second
    copy into a folder nested in the first, or replace the user's link with a file; None otherwise."""
    raw_dir = spec.raw_dir(root)
    for parent in root.parents[:3]:
        if root in (parent / spec.folder, spec.raw_dir(parent)) or root.parent == spec.raw_dir(parent):
            if all((spec.raw_dir(parent) / name).is_file() for name in names):
                parent = Path(os.path.abspath(parent))  # "." said as a folder's name
                return (f"the data folder {root} is inside the one that holds the files, {parent}: mnistlab (as "
                        f"torchvision) reads {spec.name} from <data folder>/{spec.folder}/raw/, which here is "
                        f"{raw_dir} (where a download would put a second copy), not {spec.raw_dir(parent)}. Pass "
                        f"--data-dir {parent} (or set data.dir or MNISTLAB_DATA to it)")
    for name in names:
        path = raw_dir / name
        if path.is_symlink() and not path.exists():  # is_file() is False for it: it would be called missing
            return (f"{path} is a link to {os.readlink(path)}, which does not exist (a drive not mounted, a file "
                    "moved?): restore what it points to, or remove the link (data.download then fetches the file)")
    return None


def _found_elsewhere(spec: DatasetSpec, raw_dir: Path, names: list[str]) -> str:
    """What stands where ``raw_dir`` should be, or where files of ``names`` lie near it but not in it (in the data
    folder itself, or under a folder named like the dataset in another way: ``mnist/raw``, ``Fashion-MNIST``):
    a clause for the missing-file error, or "". Such files may be another dataset's, so they are only pointed
    at, never read."""
    root = raw_dir.parent.parent
    for folder in (root, raw_dir.parent, raw_dir):
        with contextlib.suppress(OSError):
            if folder.exists() and not folder.is_dir():  # no file can be put in it, nor downloaded there
                return f"; {'the data folder ' if folder == root else ''}{folder} is a file, not a folder"

    def simple(name: str) -> str:
        return "".join(c for c in name.lower() if c.isalnum())

    places = [root]
    with contextlib.suppress(OSError):  # a data folder that is not there, or that may not be listed
        for entry in sorted(root.iterdir()):
            if entry.name != spec.folder and simple(entry.name) in (simple(spec.folder), simple(spec.name)):
                places += [entry, entry / "raw"]
    for place in places:
        with contextlib.suppress(OSError):
            found = [name for name in names if (place / name).is_file()]
            if found:
                return (f"; {place} holds {', '.join(found)}, but mnistlab (as torchvision) reads {spec.name} "
                        f"from {raw_dir} alone: if they are {spec.name}'s files, move them there")
    # The same files under other spellings (Kaggle's copies are train-images.idx3-ubyte, a dot for a dash)
    wanted = {simple(name): name for name in names}
    for place in [raw_dir, *places]:
        with contextlib.suppress(OSError):
            spelled = [(entry.name, wanted[simple(entry.name)]) for entry in sorted(place.iterdir())
                       if entry.is_file() and simple(entry.name) in wanted and entry.name not in names]
            if spelled:
                where = "rename them" if place == raw_dir else f"put them in {raw_dir} under those names"
                return (f"; {place} holds {', '.join(f'{have} (for {want})' for have, want in spelled)}, names "
                        f"mnistlab (as torchvision) does not read: if they are {spec.name}'s files, {where}")
    return ""


def _archives(spec: DatasetSpec, names: list[str]) -> list[tuple[str, str]]:
    """torchvision's (archive name, MD5) of each of the uncompressed files ``names``."""
    return [(archive, md5) for archive, md5 in spec.torchvision_class.resources
            if os.path.splitext(archive)[0] in names]


def _mismatched(raw_dir: Path, archives: list[tuple[str, str]]) -> list[str]:
    """The names of ``archives`` that are in ``raw_dir`` but do not have their published MD5."""
    return [name for name, md5 in archives
            if (raw_dir / name).is_file() and _md5(_read_bytes(raw_dir / name)) != md5]


def _fix_mismatched(raw_dir: Path) -> str:
    return ("if such a file is your copy of the right data, unpack it yourself (gunzip -k; an uncompressed IDX file "
            "under a .gz name only needs the .gz taken off its name); if not (another dataset's file, a download cut "
            f"short), move it out of {raw_dir} and let data.download fetch the published one, with the network on")


def _download(spec: DatasetSpec, root: Path, train: bool, training: bool) -> None:
    """Download from the dataset's mirrors, check and unpack the missing files of one split (only those: scoring
    a model offline must not fail on the training set's).

    Each archive arrives in a hidden file, ``.NAME.gz.tmp-PID`` (atomic_write's), that is renamed to its own name
    only once it has its published MD5, and unpacks likewise (``.NAME.tmp-PID``), so a file under a dataset's name is
    always whole. An archive already there with its published MD5 is unpacked, with no network; one without it
    is the user's (a recompressed copy, say), never unpacked, downloaded over or removed, and named in the error.
    The archives stay: a later run unpacks them again offline, and _verified_idx checks raw files against them.
    All of it runs under the folder's lock, so the hidden files found there are of a killed download (no cleanup
    runs on SIGKILL) and go, and a process waiting to download the same files uses this one's. A failed download
    also removes the folders it made (when still empty): a wrong --data-dir leaves nothing.
    """
    raw_dir = spec.raw_dir(root)
    made = missing_folders(raw_dir)
    try:
        with _folder_lock(raw_dir):  # another process downloading here: wait for it, then use its files
            needed = [name for name in spec.files(train) if not (raw_dir / name).is_file()]
            for name in needed:  # checked first: the download would be for nothing
                if (raw_dir / name).is_dir():
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(raw_dir / name))
            archives = _archives(spec, needed) if needed else []  # no torchvision import if none
            _remove_leftovers(raw_dir, archives)
            mismatched = _mismatched(raw_dir, archives)
            if mismatched:
                missing = [os.path.splitext(name)[0] for name, _ in archives]
                raise DataError(
                    f"{spec.name}: {', '.join(missing)} not downloaded: the archives {', '.join(mismatched)} in "
                    f"{raw_dir} do not have the MD5 torchvision publishes for them, and were left in place, "
                    f"neither unpacked nor downloaded over. To fix it, {_fix_mismatched(raw_dir)}; then run again.")
            for name, md5 in archives:
                if not (raw_dir / name).exists():
                    _fetch_from_mirrors(spec, raw_dir, name, md5)
            for name, _ in archives:
                _unpack(raw_dir / name, raw_dir / os.path.splitext(name)[0])
    except DataError:
        raise
    # Any other failure means the files are not there; what to do depends on where it went wrong. A BaseException
    # (Ctrl-C, SIGTERM) has already taken its hidden file away (in _fetch_from_mirrors, _unpack), and goes on.
    except BaseException as e:
        remove_empty(made)
        if not isinstance(e, Exception):
            raise
        message = str(e) if isinstance(e, _MirrorsFailed) else _brief(e)
        local = None
        if isinstance(e, _MirrorsFailed) and e.md5_failed:
            local = f"{e.archive} failed its MD5 check (a broken mirror, or a proxy that alters downloads?)"
        elif isinstance(e, OSError) and e.errno == errno.EISDIR:
            local = f"{e.filename} is a folder where a file belongs: remove it"
        elif isinstance(e, OSError) and e.errno in _LOCAL_ERRNOS:
            where = e.filename or root
            if e.filename and Path(e.filename).parent == raw_dir and not os.path.lexists(e.filename):
                where = raw_dir  # a file it was making there (a hidden one, named nowhere else): the folder is at fault
            local = f"make room in or access to {where} ({e.strerror}), or pass another --data-dir"
        raise _missing_error(spec, raw_dir, f"downloading into {raw_dir} failed ({message})", train=train,
                             training=training, download_on=True, local=local) from e


DOWNLOAD_TIMEOUT_S = 60  # seconds without data from the server (connecting, or any one read) before a mirror fails
_CHUNK = 1 << 20  # bytes read and written at a time, downloading and unpacking
_USER_AGENT = "mnistlab"  # some servers refuse urllib's default "Python-urllib/3.x"
# OSErrors of this machine's disk or folders, not of the network (URLError and timeouts have no such errno)
_LOCAL_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.ENOENT,
                 getattr(errno, "EDQUOT", errno.ENOSPC)}  # disk quota; not every platform names it


class _MirrorsFailed(Exception):
    """No mirror gave ``archive`` whole with its published MD5; the message says what each did."""

    def __init__(self, archive: str, failures: list[str], md5_failed: bool) -> None:
        super().__init__(f"{archive}: {'; '.join(failures)}")
        self.archive = archive
        self.md5_failed = md5_failed  # one mirror at least sent something else: the network works


def _brief(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


class _WrongMD5(Exception):
    """A mirror sent other bytes than the published archive."""


def _remove_leftovers(raw_dir: Path, archives: list[tuple[str, str]]) -> None:
    """Take away what killed downloads left in ``raw_dir``: their hidden files, and the ``.NAME.gz.fetching`` marks
    of earlier versions, which wrote the download to the archive's own name: the archive beside a mark
    goes only if it lacks its published MD5 (the user may have copied a good one there since)."""
    for name in _FILES:
        for part in [*raw_dir.glob(f".{name}.tmp-*"), *raw_dir.glob(f".{name}.gz.tmp-*")]:  # atomic_write's
            part.unlink(missing_ok=True)
    for name, md5 in archives:
        mark = raw_dir / f".{name}.fetching"
        if mark.exists():
            if _mismatched(raw_dir, [(name, md5)]):
                (raw_dir / name).unlink()
            mark.unlink()


def _fetch_from_mirrors(spec: DatasetSpec, raw_dir: Path, archive: str, md5: str) -> None:
    """Put ``archive`` in ``raw_dir`` from the first of the dataset's mirrors that sends it with its published MD5.

    A mirror that fails in any way (unreachable, an HTTP error, a stall, a connection cut, other bytes) leaves
    nothing and the next is tried; an error of this machine's disk stops at once, as no mirror helps with it.
    """
    from ..training.checkpoint import atomic_write  # (at the top, an import cycle: training imports data)

    mirrors = spec.torchvision_class.mirrors
    failures: list[str] = []
    md5_failed = False
    for i, mirror in enumerate(mirrors):
        url, announce = f"{mirror}{archive}", f"{spec.name}: downloading {archive} from {mirror}"
        try:  # atomic_write takes its hidden file away on any failure, Ctrl-C and SIGTERM too: no piece stays
            atomic_write(raw_dir / archive, lambda f: _fetch(url, f, md5, announce))
            return
        except _WrongMD5:
            md5_failed = True
            failures.append(f"failed its MD5 check from {mirror}")
        except (OSError, http.client.HTTPException) as e:
            # ssl's errors carry OpenSSL's codes as errno (1, SSL_ERROR_SSL, is also EPERM's): the network's
            if isinstance(e, OSError) and e.errno in _LOCAL_ERRNOS and not isinstance(e, ssl.SSLError):
                raise
            failures.append(f"{_brief(e)} from {mirror}")
        if i + 1 < len(mirrors):
            _say(f"{spec.name}: {archive}: {failures[-1]}; trying {mirrors[i + 1]}")
    raise _MirrorsFailed(archive, failures, md5_failed)


def _fetch(url: str, f: BinaryIO, md5: str, announce: str) -> None:
    """Write what ``url`` sends to ``f`` after saying ``announce`` on stderr with the size, where the server
    tells it. A response cut short raises ConnectionError; one without the MD5 ``md5``, _WrongMD5."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    digest, got = hashlib.md5(usedforsecurity=False), 0
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        _say(announce if expected is None else f"{announce} ({expected:,} bytes)")
        while chunk := response.read(_CHUNK):
            digest.update(chunk)
            f.write(chunk)
            got += len(chunk)
    # http.client returns what came before the server closed the connection, without a word
    if expected is not None and got != expected:
        raise ConnectionError(f"the server sent {got:,} of the {expected:,} bytes it announced")
    if digest.hexdigest() != md5:
        raise _WrongMD5


def _unpack(archive: Path, raw: Path) -> None:
    """gunzip ``archive`` to ``raw``, which appears only whole (atomic_write): a process that does not wait for the
    folder's lock (load_raw, when the files are there) never reads a part, and a kill or a full disk leaves none."""
    from ..training.checkpoint import atomic_write

    with gzip.open(archive) as src:
        atomic_write(raw, lambda dst: shutil.copyfileobj(src, dst, _CHUNK))


_quiet = contextvars.ContextVar("mnistlab_quiet_downloads", default=False)


@contextlib.contextmanager
def quiet_downloads():
    """Within this block (in this thread or task only), downloads print nothing; else one line an archive on
    stderr.

    >>> with quiet_downloads():                                                         # doctest: +SKIP
    ...     images, labels = load_raw("kmnist", "data", train=False, download=True)     # says nothing
    """
    token = _quiet.set(True)
    try:
        yield
    finally:
        _quiet.reset(token)


def _say(line: str) -> None:
    if not _quiet.get():
        print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive lock on ``folder`` itself (flock on its descriptor: no lock file to leave behind),
    made first if missing, for as long as the block runs; where flock does not exist (Windows), none.

    A failed download removes the folders it made: a process that waited for its lock then holds the
    lock of a folder that is gone, and makes and locks the folder anew.
    """
    try:
        import fcntl
    except ImportError:
        folder.mkdir(parents=True, exist_ok=True)
        yield
        return
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                still_there = os.path.samestat(os.fstat(fd), os.stat(folder))
            except FileNotFoundError:
                still_there = False
            if still_there:
                yield
                return
        finally:
            os.close(fd)  # closing releases the lock


def _md5(buf: bytearray) -> str:
    return hashlib.md5(buf, usedforsecurity=False).hexdigest()


# MNIST's files copied into the folder of Fashion-MNIST or KMNIST would load (they have the same shapes, and
# sizes) and train on digits under that dataset's class names; in MNIST's own folder, one split's file under the
# other's name failed its MD5 as "corrupted" where a rename was the fix. Hashing a whole training-images file
# takes 0.2 s, and every file of those datasets has the size of MNIST's, so first the MD5 of a file's first
# 64 KiB is looked up here; only a match is hashed whole, against MNIST's published MD5. These are MD5s of the
# first 64 KiB of MNIST's published files (all of a label file: its published MD5); a test checks them against
# those files.
_HEAD_BYTES = 1 << 16
_MNIST_BY_HEAD_MD5 = {
    "e86c114c692f9b4ec0f98a61565091e7": "train-images-idx3-ubyte",
    "a25bea736e30d166cdddb491f175f624": "train-labels-idx1-ubyte",
    "1ca09cef3876ebda74d0d80e4cbc81d4": "t10k-images-idx3-ubyte",
    "27ae3e4e09519cfbb04c329615203637": "t10k-labels-idx1-ubyte",
}


def _verified_idx(spec: DatasetSpec, path: Path, ndim: int, *, train: bool) -> torch.Tensor:
    """The IDX file ``path`` of split ``train`` of ``spec``, checked in the order that names a mistake best: its
    header and size, whether it is one of MNIST's published files (of another split, or given for another data
    set), its count against the published split's, then its MD5 where known, else the archive beside it."""
    remedy = "Delete it so it is downloaded again (with data.download=true), or replace it with a good copy."
    buf = _read_bytes(path)
    try:
        tensor = _parse_idx(buf, path, ndim)  # header and size first: their messages are the more specific
    except DataError as e:  # a download cut short, say: the file of a known dataset can be fetched again
        raise DataError(f"{e}. {remedy}") from None
    mnist_name = _mnist_file(buf)
    if mnist_name is not None and spec.name != "mnist":
        raise DataError(f"{path} is MNIST's {mnist_name} (byte for byte), not a {spec.name} file: a run would "
                        f"train or test on digits labelled with {spec.name}'s classes. {remedy}")
    if mnist_name is not None and mnist_name != path.name:  # whole, under another name: called "corrupted" before
        raise DataError(f"{path} is MNIST's {mnist_name} (byte for byte), not its {path.name}: {_SWAPPED}. "
                        f"{_name_by_split(spec)}")
    _check_split_size(spec, path, tensor.shape[0], train=train)
    expected = spec.md5.get(path.name)
    if expected is None:  # MD5s not known (see DATASETS): the published archive beside it, if any, tells
        _check_against_archive(spec, path, buf)
    elif mnist_name is None:  # not the published file (whose MD5 _mnist_file has just matched)
        # Fashion-MNIST's and KMNIST's files have MNIST's sizes: put in MNIST's folder (as code that names every
        # dataset's folder "mnist" does), they pass every check before this one, and are not damaged
        raise DataError(f"{path} is not {spec.name}'s {path.name}: its MD5 checksum is {_md5(buf)}, expected "
                        f"{expected} (a damaged copy, or another data set's file of the same size). {remedy}")
    return tensor


_SWAPPED = "the train-* and t10k-* files look swapped, or one split's file was put under the other's name"


def _name_by_split(spec: DatasetSpec) -> str:
    n_train, n_test = spec.split_sizes
    return (f"Give each file the name of its split ({spec.name}'s train-* files hold {n_train:,} images or labels, "
            f"its t10k-* files {n_test:,}), or delete the misnamed files so data.download=true fetches the "
            "published ones.")


def _mnist_file(buf: bytearray) -> str | None:
    """The name of MNIST's published file that ``buf`` is byte for byte, or None: a full MD5 only where the first
    64 KiB match (see _MNIST_BY_HEAD_MD5), as they do for MNIST's own files, which are hashed whole anyway."""
    name = _MNIST_BY_HEAD_MD5.get(_md5(buf[:_HEAD_BYTES]))
    return name if name is not None and _md5(buf) == DATASETS["mnist"].md5[name] else None


def _check_split_size(spec: DatasetSpec, path: Path, count: int, *, train: bool) -> None:
    """A file of split ``train`` with ``count`` entries must not hold more than the published split: with no
    published archive beside it, the only check that tells a swapped Fashion-MNIST or KMNIST test file (60,000
    entries) from its own (10,000)."""
    published = spec.split_size(train)
    if count <= published:
        return
    kind = "images" if "-images-" in path.name else "labels"
    if count == spec.split_size(not train):
        why, fix = f", and as many as its {'test' if train else 'training'} set: {_SWAPPED}", _name_by_split(spec)
    else:
        why = f": it is not {spec.name}'s {path.name} (another data set's, or files joined?)"
        fix = "Replace it with a good copy, or delete it so data.download=true fetches the published one."
    raise DataError(f"{path} holds {count:,} {kind}, more than the {published:,} of {spec.name}'s "
                    f"{'training' if train else 'test'} set{why}. {fix}")


def _check_against_archive(spec: DatasetSpec, path: Path, buf: bytearray) -> None:
    """Where the published archive of ``path`` lies beside it, ``buf`` (its bytes) must be what it unpacks to.

    A gzip file ends with the CRC-32 and the size (mod 2**32) of what it holds: comparing those costs a CRC-32 of
    ``buf`` (about 20 ms for KMNIST's 47 MB of training images), and no unpacking. Only on a mismatch is the archive
    hashed, and torchvision imported for its published MD5: the user's own archive (another MD5) proves nothing.
    """
    archive = path.with_name(path.name + ".gz")
    try:
        with open(archive, "rb") as f:
            f.seek(-8, os.SEEK_END)
            crc, size = struct.unpack("<II", f.read(8))
    except OSError:  # no archive there (or one too short for a gzip file): nothing to compare with
        return
    if zlib.crc32(buf) == crc and len(buf) % 2**32 == size:
        return
    published = dict(spec.torchvision_class.resources).get(archive.name)
    if published is None or _mismatched(path.parent, [(archive.name, published)]):  # the user's: proves nothing
        return
    differs = (f"it has {len(buf):,} bytes, the archive's {size:,}" if len(buf) % 2**32 != size
               else "the same size, other bytes")
    raise DataError(f"{path} is not what the published archive beside it, {archive.name}, unpacks to ({differs}). "
                    "Delete it: the next run with data.download=true unpacks the archive again, with no network.")


def load_raw(
    dataset: str, root: str | os.PathLike[str], *, train: bool, download: bool, training: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8, N x 1 x H x W) and labels (int64, N) of one split, verified.

    Reads ``root/<Folder>/raw/``; when files of this split are missing and ``download`` is true,
    those are downloaded first (not the other split's). ``training`` (default: ``train``) says
    whether a training run reads it, which needs both splits: what a missing-file error asks for.

    >>> images, labels = load_raw("mnist", "/work/shared/data", train=False, download=False)  # doctest: +SKIP
    >>> images.shape, labels.dtype                                                              # doctest: +SKIP
    (torch.Size([10000, 1, 28, 28]), torch.int64)
    """
    spec = _spec(dataset)
    root = _data_folder(root, "the data folder")
    raw_dir = spec.raw_dir(root)
    training = train if training is None else training
    image_name, label_name = spec.files(train)
    image_path, label_path = raw_dir / image_name, raw_dir / label_name

    try:
        if not (image_path.is_file() and label_path.is_file()):
            misplaced = _misplaced(spec, root, (image_name, label_name))
            if misplaced is not None:
                raise DataError(f"{spec.name}: {misplaced}.")
            if not download:
                raise _missing_error(spec, raw_dir, "files not found and data.download is false", train=train,
                                     training=training)
            _download(spec, root, train, training)
            if not (image_path.is_file() and label_path.is_file()):
                raise _missing_error(spec, raw_dir, "the download finished but files are still missing",
                                     train=train, training=training, download_on=True)
    except OSError as e:  # is_file() raises for a folder that may not be entered, or a name too long (Python 3.11)
        raise DataError(f"cannot look into the data folder {raw_dir}: {e.strerror or e}; make it readable, or pass "
                        "another --data-dir") from None

    images = _verified_idx(spec, image_path, 3, train=train)
    labels = _verified_idx(spec, label_path, 1, train=train)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{image_path} has {images.shape[0]} images but {label_path} has {labels.shape[0]} labels; "
            f"they must be the same split of the same dataset"
        )
    if images.shape[0] == 0:  # a valid IDX header over no data: say so, not "val_size leaves no images" later
        raise DataError(f"{image_path} holds no images (its IDX header says 0); replace it with a complete copy "
                        f"of the {spec.name} {'training' if train else 'test'} set")
    if tuple(images.shape[1:]) != spec.image_size:
        h, w = spec.image_size
        raise DataError(
            f"{image_path} holds {images.shape[1]}x{images.shape[2]} images, expected {h}x{w} for {spec.name}"
        )
    if labels.numel() and int(labels.max()) >= spec.num_classes:  # uint8: never below 0
        bad = int((labels >= spec.num_classes).nonzero()[0, 0])
        raise DataError(
            f"{label_path} has label {int(labels[bad])} at index {bad}; labels must be in "
            f"[0, {spec.num_classes}) for {spec.name}"
        )
    return images.unsqueeze(1), labels.long()


# ---------------------------------------------------------------------------
# splits


@dataclass(frozen=True)
class Split:
    """One split: uint8 images (N x C x H x W) and int64 labels (N), on one device.

    ``indices`` are the positions of these examples in the file they came from
    (the training file for train and validation, the test file for test).
    A split may be empty (``val_size = 0``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            got = f"{self.images.dtype} {tuple(self.images.shape)}"
            raise ValueError(f"Split.images must be uint8 N x C x H x W, got {got}")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            got = f"{self.labels.dtype} {tuple(self.labels.shape)}"
            raise ValueError(f"Split.labels must be int64 of shape (N,), got {got}")
        n = self.images.shape[0]
        if self.labels.shape[0] != n or (self.indices is not None and self.indices.shape != (n,)):
            raise ValueError(
                f"Split parts disagree in length: {n} images, {self.labels.shape[0]} labels"
                + ("" if self.indices is None else f", {self.indices.shape[0]} indices")
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: str | torch.device) -> Split:
        return Split(
            self.images.to(device),
            self.labels.to(device),
            None if self.indices is None else self.indices.to(device),
        )


@dataclass(frozen=True)
class DataBundle:
    """Everything the trainer and the model factory need about the data of a run."""

    train: Split
    val: Split  # may be empty (val_size = 0)
    test: Split
    dataset: str  # name from DATASETS
    classes: list[str]  # class names, indexed by label
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]  # (H, W)
    mean: tuple[float, ...]  # per channel, of images / 255, from this bundle's training split
    std: tuple[float, ...]  # per channel (population std), likewise
    # data.test_limit cut the test split short: a limit of the split's size or above keeps all of it, a whole test
    test_partial: bool = False


def split_indices(
    n: int, val_size: int, split_seed: int, train_limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) positions among ``n`` training images.

    One random permutation from a CPU generator seeded with ``split_seed``:
    validation is its first ``val_size`` entries, training the rest, then cut to
    the first ``train_limit``. Both stay in permutation order, so ``train_limit``
    picks a uniform random subset whatever the order of the file, and a smaller
    ``val_size`` gives a subset of a larger one's validation split.

    >>> train, val = split_indices(10, 3, split_seed=0)
    >>> len(train), len(val), sorted(train.tolist() + val.tolist()) == list(range(10))
    (7, 3, True)
    """
    if not 0 <= val_size < n:
        raise ConfigError(
            f"data.val_size = {val_size} must be at least 0 and less than the {n} training images, "
            f"so that some are left for training"
        )
    if train_limit is not None and train_limit < 1:
        raise ConfigError(f"data.train_limit must be at least 1, got {train_limit}")
    generator = torch.Generator().manual_seed(split_seed)
    perm = torch.randperm(n, generator=generator)
    train = perm[val_size:]
    if train_limit is not None:
        train = train[:train_limit]  # a limit above what is left keeps all of it
    return train.clone(), perm[:val_size].clone()


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``images / 255`` for uint8 N x C x H x W images.

    Exact, from a 256-bin histogram per channel in float64, so the whole training
    set never needs a float copy.

    >>> channel_stats(torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1))
    ((0.5,), (0.5,))
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"channel_stats needs uint8 N x C x H x W images, got {images.dtype} {tuple(images.shape)}")
    if images.numel() == 0:
        raise ValueError("channel_stats needs at least one image")
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).cpu().to(torch.float64)
        total = counts.sum()
        mean = (counts * values).sum() / total
        var = (counts * values.square()).sum() / total - mean.square()
        means.append(float(mean) / 255.0)
        stds.append(float(var.clamp_min(0.0).sqrt()) / 255.0)
    return tuple(means), tuple(stds)


def _test_split(spec: DatasetSpec, root: Path, download: bool, training: bool) -> Split:
    images, labels = load_raw(spec.name, root, train=False, download=download, training=training)
    return Split(images, labels, torch.arange(labels.shape[0]))


def _first(split: Split, limit: int | None) -> Split:
    """The first ``limit`` images of ``split`` (all of them when ``limit`` is None or above its size)."""
    if limit is None or limit >= len(split):
        return split
    return Split(split.images[:limit], split.labels[:limit], split.indices[:limit])


def load_data(cfg: DataConfig, device: str | torch.device = "cpu") -> DataBundle:
    """Load, verify and split a dataset as ``cfg`` says.

    The training file is split into train and validation by :func:`split_indices`
    (seeded by ``cfg.split_seed``, independent of the training seed), then
    ``cfg.train_limit`` applies. Mean and std come from the resulting training
    split only. ``cfg.test_limit`` keeps the first images of the test split. All splits are moved to ``device``
    once, as uint8.

    With ``val_size = 0`` the validation split is empty; code that evaluates on it
    must check ``len(data.val)``.

    >>> from mnistlab.config import DataConfig
    >>> data = load_data(DataConfig(dir="/work/shared/data", train_limit=2000))  # doctest: +SKIP
    >>> len(data.train), len(data.val), [round(m, 4) for m in data.mean]          # doctest: +SKIP
    (2000, 5000, [0.1305])
    """
    spec = _spec(cfg.dataset)
    root = resolve_data_dir(cfg.dir)
    train_images, train_labels = load_raw(spec.name, root, train=True, download=cfg.download)
    test = _test_split(spec, root, cfg.download, training=True)
    # A copy of the training files under the test files' names: MNIST's MD5s refuse it, but for the datasets without
    # known MD5s it would load, and the test accuracy would be measured on the images the model trained on.
    if test.images.shape == train_images.shape and torch.equal(test.images, train_images):
        (train_name, _), (test_name, _) = spec.files(True), spec.files(False)
        raise DataError(f"{spec.raw_dir(root) / test_name} holds the same images as {train_name} beside it: the test "
                        f"split would be the training set, and its accuracy no test. Replace the two t10k-* files "
                        f"with the {spec.name} test set (or delete them so data.download fetches it).")

    n = train_labels.shape[0]
    if not cfg.val_size < n:
        raise ConfigError(
            f"data.val_size = {cfg.val_size} leaves no training images: the {spec.name} training set "
            f"has {n} images; choose a val_size below {n}"
        )
    train_idx, val_idx = split_indices(n, cfg.val_size, cfg.split_seed, cfg.train_limit)
    train = Split(train_images.index_select(0, train_idx), train_labels.index_select(0, train_idx), train_idx)
    val = Split(train_images.index_select(0, val_idx), train_labels.index_select(0, val_idx), val_idx)
    mean, std = channel_stats(train.images)  # on the CPU, before the move: cheap and device-independent
    if not all(std):  # else the model's normalization refused it: "std must be positive", with no word of the data
        raise DataError(f"the {len(train)} training images (of {spec.raw_dir(root) / spec.files(True)[0]}) have every "
                        f"pixel {round(mean[0] * 255)}: there is nothing to learn from; the file is damaged, or not "
                        f"{spec.name}'s images")
    return DataBundle(
        train=train.to(device),
        val=val.to(device),
        test=_first(test, cfg.test_limit).to(device),
        test_partial=cfg.test_limit is not None and cfg.test_limit < len(test),
        dataset=spec.name,
        classes=list(spec.classes),
        num_classes=spec.num_classes,
        in_channels=spec.in_channels,
        image_size=spec.image_size,
        mean=mean,
        std=std,
    )


@dataclass(frozen=True)
class ScoringSet:
    """A dataset's test split alone, with what names its classes."""

    test: Split
    dataset: str  # name from DATASETS
    classes: list[str]
    num_classes: int


def load_test(cfg: DataConfig, device: str | torch.device = "cpu") -> ScoringSet:
    """The test split of ``cfg.dataset`` only (its first ``cfg.test_limit`` images, where set): what scoring a
    trained model needs (its normalization is in the model), so the training files need not be there, nor be
    downloaded.

    >>> ts = load_test(DataConfig(dir="/work/shared/data"))          # doctest: +SKIP
    >>> len(ts.test), ts.num_classes                                 # doctest: +SKIP
    (10000, 10)
    """
    spec = _spec(cfg.dataset)
    test = _first(_test_split(spec, resolve_data_dir(cfg.dir), cfg.download, training=False), cfg.test_limit)
    test = test.to(device)
    return ScoringSet(test=test, dataset=spec.name, classes=list(spec.classes), num_classes=spec.num_classes)
