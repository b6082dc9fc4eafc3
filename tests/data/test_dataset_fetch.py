"""The download: what it fetches, from which mirror, what it leaves alone, what a kill leaves; and the checks of
files against what was published (MNIST's files given for another dataset, a raw file against its archive).

The mirrors are local HTTP servers (the ``serve`` fixture) that hold gzip archives built here, with the dataset
class's ``mirrors`` and ``resources`` pointed at them: the real download code runs, and nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import shutil
import signal
import struct
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from mnistlab.config import DataConfig
from mnistlab.data import DATASETS, datasets, load_data, load_raw, load_test
from mnistlab.errors import DataError

MNIST_FILES = tuple(DATASETS["mnist"].md5)
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes((0, 0, 8, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def small_dataset(n_train: int = 6, n_test: int = 4) -> dict[str, bytes]:
    """The four IDX files of a small dataset of random images: name -> bytes."""
    rng = np.random.default_rng(0)
    files = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        files[f"{prefix}-images-idx3-ubyte"] = idx_bytes(rng.integers(0, 256, (n, 28, 28)))
        files[f"{prefix}-labels-idx1-ubyte"] = idx_bytes(np.arange(n) % 10)
    return files


def gzipped(files: dict[str, bytes]) -> dict[str, bytes]:
    """The archives of ``files``: NAME.gz -> gzip bytes."""
    return {name + ".gz": gzip.compress(data, compresslevel=1, mtime=0) for name, data in files.items()}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def hidden(raw: Path) -> list[str]:
    return sorted(p.name for p in raw.glob(".*"))


# ---------------------------------------------------------------------------
# local mirrors


class Mirror(http.server.BaseHTTPRequestHandler):
    """Serves ``archives`` (name -> bytes) as ``kind`` says: "ok"; "404"; "html" (a 200 page, as a captive portal
    sends); "other" (another file's bytes: a wrong MD5); "truncated" (half the body, then the connection closes);
    "stall" (half the body, then nothing until the test ends); "garbage" (no HTTP at all)."""

    def __init__(self, archives, kind, requests, released, *args, **kwargs):
        self.archives, self.kind, self.requests, self.released = archives, kind, requests, released
        super().__init__(*args, **kwargs)

    def log_message(self, *args):  # no lines on stderr: tests read it
        pass

    def do_GET(self):
        port = self.server.server_address[1]
        name = self.path.lstrip("/")
        self.requests.append((port, name))
        if self.kind == "garbage":
            self.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n")
            return
        if self.kind == "404" or name not in self.archives:
            self.send_error(404)
            return
        body = {"html": b"<html><body>Please log in</body></html>", "other": b"\x1f\x8b other bytes"}.get(
            self.kind, self.archives[name])
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.kind in ("truncated", "stall"):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if self.kind == "stall":
                self.released.wait(10)
            self.close_connection = True
            return
        self.wfile.write(body)


class Mirrors:
    """What the ``serve`` fixture returns: ``urls`` of the mirrors, ``requests``: (port, archive) in order."""

    def __init__(self, urls: list[str], requests: list[tuple[int, str]]):
        self.urls, self.requests = urls, requests

    def asked(self) -> list[str]:
        """The archives requested, from any mirror."""
        return [name for _, name in self.requests]


@pytest.fixture
def serve(monkeypatch):
    """``serve(dataset, archives, *kinds)``: one local server per kind (see Mirror), in order, as the dataset's
    mirrors; ``archives`` (NAME.gz -> bytes) as its resources, with their MD5s as the published ones."""
    servers, released, requests = [], threading.Event(), []
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # a proxy set in the environment would send these away
    monkeypatch.setattr(datasets, "DOWNLOAD_TIMEOUT_S", 0.5)

    def start(dataset: str, archives: dict[str, bytes], *kinds: str) -> Mirrors:
        urls = []
        for kind in kinds or ("ok",):
            handler = functools.partial(Mirror, archives, kind, requests, released)
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            server.daemon_threads = True
            server.handle_error = lambda *a: None  # a client that gave up (timed out) is what some tests want
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)
            urls.append(f"http://127.0.0.1:{server.server_address[1]}/")
        cls = DATASETS[dataset].torchvision_class
        monkeypatch.setattr(cls, "mirrors", urls)
        monkeypatch.setattr(cls, "resources", [(name, md5(data)) for name, data in archives.items()])
        return Mirrors(urls, requests)

    yield start
    released.set()
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def mnist_archives(mnist_root) -> dict[str, bytes]:
    """Archives of real MNIST's test split (its raw MD5s are known, so fake data will not load as MNIST)."""
    return gzipped({name: (mnist_root / "MNIST" / "raw" / name).read_bytes() for name in TEST_FILES})


# ---------------------------------------------------------------------------
# what is fetched, and what is said


def test_only_the_missing_files_of_the_split_are_fetched_checked_unpacked_and_kept(tmp_path, serve, capfd):
    files = small_dataset()
    archives = gzipped(files)
    mirrors = serve("kmnist", archives)
    raw = tmp_path / "KMNIST" / "raw"
    images, labels = load_raw("kmnist", tmp_path, train=False, download=True)
    assert (len(images), len(labels)) == (4, 4)
    assert mirrors.asked() == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]  # not the training set's
    assert sorted(p.name for p in raw.iterdir()) == [  # the archives stay: a later run unpacks them offline
        "t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte", "t10k-labels-idx1-ubyte.gz"]
    assert (raw / "t10k-images-idx3-ubyte").read_bytes() == files["t10k-images-idx3-ubyte"]
    # One line an archive on stderr, no progress bars; nothing on stdout
    out, err = capfd.readouterr()
    assert out == ""
    assert err.splitlines() == [f"kmnist: downloading {name} from {mirrors.urls[0]} ({len(archives[name]):,} bytes)"
                                for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")]


def test_quiet_downloads_says_nothing_in_its_block_only(tmp_path, serve, capfd):
    from mnistlab.data.datasets import quiet_downloads

    serve("kmnist", gzipped(small_dataset()))
    with quiet_downloads():
        load_raw("kmnist", tmp_path, train=False, download=True)
    assert capfd.readouterr() == ("", "")
    load_raw("kmnist", tmp_path, train=True, download=True)  # after the block: said again
    assert capfd.readouterr().err.count("kmnist: downloading train-") == 2


def test_a_quiet_training_run_downloads_without_a_word(tmp_path, serve, capfd, no_report):
    # torchvision's progress bars went to stderr under `mnistlab train --quiet`
    from mnistlab.config import Config, apply_overrides
    from mnistlab.training import train

    mirrors = serve("kmnist", gzipped(small_dataset(n_train=40, n_test=10)))
    cfg = apply_overrides(Config(), [f"data.dir={tmp_path / 'data'}", "data.dataset=kmnist", "data.val_size=10",
                                     "model.name=cnn", "model.width=0.25", "train.epochs=1", "train.batch_size=10",
                                     "tensorboard.enabled=false"])
    train(cfg, out=tmp_path / "run", quiet=True)
    assert len(mirrors.asked()) == 4 and capfd.readouterr() == ("", "")


def test_load_test_on_real_mnist_downloads_only_the_missing_test_files(tmp_path, serve, mnist_root, mnist_archives):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    shutil.copyfile(mnist_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte", raw / "t10k-images-idx3-ubyte")
    mirrors = serve("mnist", mnist_archives)
    scoring = load_test(DataConfig(dataset="mnist", dir=str(tmp_path), download=True))
    assert len(scoring.test) == 10_000
    assert mirrors.asked() == ["t10k-labels-idx1-ubyte.gz"]


def test_a_training_run_downloads_both_splits_once_and_loads_them(tmp_path, serve):
    mirrors = serve("kmnist", gzipped(small_dataset(n_train=8, n_test=3)))
    data = load_data(DataConfig(dataset="kmnist", dir=str(tmp_path), val_size=3, download=True))
    assert (len(data.train), len(data.val), len(data.test)) == (5, 3, 3)
    assert sorted(mirrors.asked()) == sorted(name + ".gz" for name in MNIST_FILES)


def test_two_downloads_into_one_folder_fetch_each_archive_once_and_both_load(tmp_path, serve):
    mirrors = serve("kmnist", gzipped(small_dataset()))
    results, errors = [], []

    def load():
        try:
            results.append(len(load_raw("kmnist", tmp_path, train=False, download=True)[0]))
        except BaseException as e:  # reported by the assert below
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == [] and results == [4, 4]
    assert mirrors.asked() == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]  # the second waited


def test_the_archives_of_an_earlier_download_are_unpacked_again_with_no_network(tmp_path, serve):
    files = small_dataset()
    mirrors = serve("kmnist", gzipped(files), "404")
    raw = tmp_path / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    for name, data in gzipped(files).items():
        (raw / name).write_bytes(data)
    images, _ = load_raw("kmnist", tmp_path, train=True, download=True)
    assert len(images) == 6 and mirrors.requests == []
    assert (raw / "train-images-idx3-ubyte").read_bytes() == files["train-images-idx3-ubyte"]


# ---------------------------------------------------------------------------
# a mirror that fails: the next is tried (audit item 3)


@pytest.mark.parametrize("first", ["404", "html", "other", "truncated", "stall", "garbage"])
def test_when_the_first_mirror_fails_the_second_is_tried(tmp_path, serve, capfd, first):
    mirrors = serve("kmnist", gzipped(small_dataset()), first, "ok")
    images, _ = load_raw("kmnist", tmp_path, train=False, download=True)
    assert len(images) == 4
    first_port, second_port = (int(url.rsplit(":", 1)[1].rstrip("/")) for url in mirrors.urls)
    assert [port for port, _ in mirrors.requests] == [first_port, second_port, first_port, second_port]
    tried = [line for line in capfd.readouterr().err.splitlines() if "trying" in line]
    assert len(tried) == 2 and tried[0].startswith("kmnist: t10k-images-idx3-ubyte.gz: ")
    assert tried[0].endswith(f" from {mirrors.urls[0]}; trying {mirrors.urls[1]}")
    assert hidden(tmp_path / "KMNIST" / "raw") == []


@pytest.mark.parametrize(("first", "said"), [
    ("404", "HTTPError: HTTP Error 404: Not Found"),
    ("html", "failed its MD5 check"),
    ("truncated", "ConnectionError: the server sent {half:,} of the {size:,} bytes it announced"),
    ("stall", "TimeoutError: timed out"),
    ("garbage", "BadStatusLine: SSH-2.0-OpenSSH_9.6"),
])
def test_when_every_mirror_fails_one_data_error_names_each_failure(tmp_path, serve, first, said):
    archives = gzipped(small_dataset())
    mirrors = serve("kmnist", archives, first, "404")
    with pytest.raises(DataError) as err:
        load_raw("kmnist", tmp_path, train=False, download=True)
    message = str(err.value)
    size = len(archives["t10k-images-idx3-ubyte.gz"])
    assert (f"downloading into {tmp_path / 'KMNIST' / 'raw'} failed (t10k-images-idx3-ubyte.gz: "
            f"{said.format(half=size // 2, size=size)}") in message
    assert f" from {mirrors.urls[0]}; HTTPError: HTTP Error 404: Not Found from {mirrors.urls[1]}); missing" in message
    assert "\n" not in message
    assert mirrors.asked() == ["t10k-images-idx3-ubyte.gz"] * 2  # the labels' archive would not help
    assert list(tmp_path.iterdir()) == []  # no piece, and the folders this call made are gone again


def test_an_archive_that_fails_its_md5_from_every_mirror_says_so_and_leaves_nothing(tmp_path, serve):
    raw = tmp_path / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    mirrors = serve("kmnist", gzipped(small_dataset()), "other", "html")
    with pytest.raises(DataError) as err:
        load_raw("kmnist", tmp_path, train=True, download=True)
    message = str(err.value)
    assert (f"(train-images-idx3-ubyte.gz: failed its MD5 check from {mirrors.urls[0]}; failed its MD5 check from "
            f"{mirrors.urls[1]})") in message
    assert ("data.download is on; train-images-idx3-ubyte.gz failed its MD5 check (a broken mirror, or a proxy "
            "that alters downloads?), and run again") in message
    assert "connect to the network" not in message  # the network worked
    assert list(raw.iterdir()) == []  # nothing left to be taken for a good archive


def test_a_full_disk_stops_the_download_at_once(tmp_path, serve, monkeypatch):
    mirrors = serve("kmnist", gzipped(small_dataset()), "ok", "ok")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datasets.os, "fsync", full)
    with pytest.raises(DataError, match=r"OSError: \[Errno 28\] No space left on device\).*let the download "
                                        r"succeed: data.download is on; make room in or access to "):
        load_raw("kmnist", tmp_path, train=False, download=True)
    assert len(mirrors.requests) == 1  # another mirror does not make room on this disk
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# what a kill leaves (audit item 2), and the marks of older versions (audit item 1)


def test_ctrl_c_while_fetching_or_unpacking_leaves_no_piece_and_the_next_run_loads(tmp_path, serve, monkeypatch):
    files = small_dataset()
    mirrors = serve("kmnist", gzipped(files))
    raw = tmp_path / "KMNIST" / "raw"
    guarded = urllib.request.urlopen

    def interrupted_read(*args, **kwargs):
        response = guarded(*args, **kwargs)
        response.read = lambda *a: (_ for _ in ()).throw(KeyboardInterrupt())
        return response

    monkeypatch.setattr(urllib.request, "urlopen", interrupted_read)
    with pytest.raises(KeyboardInterrupt):
        load_raw("kmnist", tmp_path, train=False, download=True)
    assert not (tmp_path / "KMNIST").exists()  # no piece of an archive, and no folder it made
    monkeypatch.setattr(urllib.request, "urlopen", guarded)

    def interrupted_copy(src, dst, length=0):
        dst.write(src.read(100))
        raise KeyboardInterrupt

    real_copy = shutil.copyfileobj
    monkeypatch.setattr(datasets.shutil, "copyfileobj", interrupted_copy)
    with pytest.raises(KeyboardInterrupt):
        load_raw("kmnist", tmp_path, train=False, download=True)
    assert sorted(p.name for p in raw.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    monkeypatch.setattr(datasets.shutil, "copyfileobj", real_copy)
    images, _ = load_raw("kmnist", tmp_path, train=False, download=True)
    assert len(images) == 4 and len(mirrors.requests) == 3  # the last run only unpacked
    assert hidden(raw) == []


def test_a_kill_while_unpacking_leaves_no_raw_file_and_the_next_run_unpacks(tmp_path):
    # A raw file written in place and cut short was refused by every later run (and read by a second process)
    files = small_dataset()
    raw = tmp_path / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    resources = []
    for name, data in gzipped(files).items():
        (raw / name).write_bytes(data)
        resources.append((name, md5(data)))
    killed = subprocess.run([sys.executable, "-c", f"""
import os, shutil, signal
import torchvision.datasets
from mnistlab.data import load_raw
torchvision.datasets.KMNIST.resources = {resources!r}
def copy_then_die(src, dst, length=0):
    dst.write(src.read(100))
    dst.flush()
    os.kill(os.getpid(), signal.SIGKILL)
shutil.copyfileobj = copy_then_die
load_raw("kmnist", {str(tmp_path)!r}, train=False, download=True)
"""], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (raw / "t10k-images-idx3-ubyte").exists()
    assert [name.split(".tmp-")[0] for name in hidden(raw)] == [".t10k-images-idx3-ubyte"]  # a dead one's piece
    import torchvision.datasets

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torchvision.datasets.KMNIST, "mirrors", [])  # offline
        mp.setattr(torchvision.datasets.KMNIST, "resources", resources)
        images, _ = load_raw("kmnist", tmp_path, train=False, download=True)
    assert len(images) == 4 and hidden(raw) == []


@pytest.mark.parametrize("archive", ["good", "cut short"])
def test_the_mark_of_an_older_version_takes_away_only_an_archive_without_its_md5(tmp_path, serve, archive):
    # Older versions wrote the download to the archive's own name and marked it with .NAME.gz.fetching until it
    # was whole. A kill left the mark; the user then copied a good archive there, and the next run deleted it.
    archives = gzipped(small_dataset())
    mirrors = serve("kmnist", archives)
    raw = tmp_path / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (raw / f".{name}.fetching").touch()
        (raw / name).write_bytes(archives[name] if archive == "good" else archives[name][:20])
    images, _ = load_raw("kmnist", tmp_path, train=False, download=True)
    assert len(images) == 4 and hidden(raw) == []
    assert mirrors.asked() == ([] if archive == "good" else ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
    assert (raw / "t10k-images-idx3-ubyte.gz").read_bytes() == archives["t10k-images-idx3-ubyte.gz"]


# ---------------------------------------------------------------------------
# archives in the folder that are not the published ones: the user's, never deleted


@pytest.mark.parametrize("kind", ["recompressed", "uncompressed under .gz names"])
def test_archives_the_user_put_there_are_left_in_place_and_named_when_their_md5_differs(tmp_path, serve, kind):
    files = small_dataset()
    mirrors = serve("fashion-mnist", gzipped(files))  # the published ones, as the mirror serves them
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    saved = {name + ".gz": gzip.compress(data, compresslevel=9) if kind == "recompressed" else data
             for name, data in files.items()}
    for name, data in saved.items():
        (raw / name).write_bytes(data)
    with pytest.raises(DataError) as err:
        load_raw("fashion-mnist", tmp_path, train=True, download=True)
    message = str(err.value)
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == saved  # all there, unchanged
    assert "the archives train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz in" in message
    assert "do not have the MD5 torchvision publishes for them, and were left in place" in message
    assert "unpack it yourself (gunzip -k; an uncompressed IDX file under a .gz name only needs the .gz" in message
    assert "removed" not in message
    assert mirrors.requests == []  # not downloaded over them either


def test_a_process_that_waited_for_a_download_which_failed_and_removed_its_folder_makes_it_anew(tmp_path):
    # The failed download took away the folders it had made after giving up the lock... or while holding it:
    # the waiting process then held the lock of a folder that was gone, and wrote into nothing.
    from mnistlab.data.datasets import _folder_lock

    folder, inside = tmp_path / "MNIST" / "raw", threading.Event()
    second: list[bool] = []

    def waiter():
        assert inside.wait(timeout=10)
        with _folder_lock(folder):
            second.append(folder.is_dir())
            (folder / "written").write_text("ok")

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    with _folder_lock(folder):
        inside.set()
        t.join(timeout=0.5)  # it waits for the lock
        assert t.is_alive() and second == []
        folder.rmdir()  # as remove_empty does after a failed download
    t.join(timeout=10)
    assert second == [True] and (folder / "written").read_text() == "ok"


# ---------------------------------------------------------------------------
# a raw file of Fashion-MNIST or KMNIST against the published archive beside it (audit item 4)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # a pixel
    path.write_bytes(data)


@pytest.mark.parametrize("dataset", ["kmnist", "fashion-mnist"])
def test_a_raw_file_that_is_not_what_the_published_archive_beside_it_unpacks_to_is_refused(
        tmp_path, serve, dataset):
    mirrors = serve(dataset, gzipped(small_dataset()))
    load_raw(dataset, tmp_path, train=False, download=True)  # the archives of its resources, beside the files
    raw = tmp_path / DATASETS[dataset].folder / "raw"
    mirrors.requests.clear()
    images = raw / "t10k-images-idx3-ubyte"
    flip_a_byte(images)
    with pytest.raises(DataError) as err:
        load_raw(dataset, tmp_path, train=False, download=True)
    assert str(err.value) == (
        f"{images} is not what the published archive beside it, t10k-images-idx3-ubyte.gz, unpacks to (the same "
        "size, other bytes). Delete it: the next run with data.download=true unpacks the archive again, with no "
        "network.")
    images.unlink()  # as it says
    assert len(load_raw(dataset, tmp_path, train=False, download=True)[0]) == 4
    assert mirrors.requests == []


def test_a_raw_file_without_the_published_archive_beside_it_loads_as_before(tmp_path, serve):
    files = small_dataset()
    serve("kmnist", gzipped(files))
    raw = tmp_path / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    for name, data in files.items():
        (raw / name).write_bytes(data)
    flip_a_byte(raw / "t10k-images-idx3-ubyte")
    assert len(load_raw("kmnist", tmp_path, train=False, download=False)[0]) == 4  # no archive: nothing to go by
    # the user's archive (another MD5) beside it: not the published data, so it proves nothing either
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(files["t10k-images-idx3-ubyte"], compresslevel=9))
    assert len(load_raw("kmnist", tmp_path, train=False, download=False)[0]) == 4


# ---------------------------------------------------------------------------
# MNIST's files given for Fashion-MNIST or KMNIST


def test_the_head_md5s_are_those_of_mnists_published_files(mnist_root):
    from mnistlab.data.datasets import _HEAD_BYTES, _MNIST_BY_HEAD_MD5

    for name in MNIST_FILES:
        with open(mnist_root / "MNIST" / "raw" / name, "rb") as f:
            assert _MNIST_BY_HEAD_MD5[hashlib.md5(f.read(_HEAD_BYTES)).hexdigest()] == name


@pytest.mark.parametrize("dataset", ["fashion-mnist", "kmnist"])
def test_mnists_files_are_refused_for_another_dataset(tmp_path, mnist_root, dataset):
    raw = tmp_path / DATASETS[dataset].folder / "raw"
    raw.mkdir(parents=True)
    for name in TEST_FILES:
        shutil.copyfile(mnist_root / "MNIST" / "raw" / name, raw / name)
    with pytest.raises(DataError, match=rf"{raw / 't10k-images-idx3-ubyte'} is MNIST's t10k-images-idx3-ubyte "
                                        rf"\(byte for byte\), not a {dataset} file"):
        load_raw(dataset, tmp_path, train=False, download=False)


def test_an_mnist_file_in_another_role_is_refused_too(tmp_path, mnist_root):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((10_000, 28, 28))))  # MNIST's test size
    shutil.copyfile(mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", raw / "train-labels-idx1-ubyte")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte is MNIST's t10k-labels-idx1-ubyte"):
        load_raw("fashion-mnist", tmp_path, train=True, download=False)


def test_a_file_that_only_begins_as_mnists_is_not_called_mnists(tmp_path, mnist_root):
    raw = tmp_path / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in TEST_FILES:
        shutil.copyfile(mnist_root / "MNIST" / "raw" / name, raw / name)
    for name in TEST_FILES:  # a new last byte: a pixel, a label
        with open(raw / name, "r+b") as f:
            f.seek(-1, 2)
            last = f.read(1)[0]
            f.seek(-1, 2)
            f.write(bytes([(last + 1) % 10]))
    images, _ = load_raw("kmnist", tmp_path, train=False, download=False)
    assert images.shape[0] == 10_000  # the first 64 KiB of the images, all of MNIST's, were not enough
