"""report.html as a person sees it: headless Chromium opens it and every image must have loaded.

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it). Where it is
missing the test is skipped, except on CI (``CI=true``), where it fails.

The check runs in a copy of the report with a small script appended (the report
itself has no scripts): after the page's load event it records, for every
image, whether it decoded (``complete`` and a natural width) and its size on
the page, into an element that ``--dump-dom`` prints.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from mnistlab.report import write_report

CHECK = """
<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images).map((img) => {
    const box = img.getBoundingClientRect();
    return {id: img.id, loaded: img.complete && img.naturalWidth > 0,
            natural: [img.naturalWidth, img.naturalHeight], shown: [Math.round(box.width), Math.round(box.height)]};
  });
  const out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = JSON.stringify(images);
  document.body.appendChild(out);
});
</script>
"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    message = "headless Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def run_chromium(binary: str, profile, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--hide-scrollbars",
    ]
    proc = subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_report_renders_in_headless_chromium(finished_run, tmp_path):
    binary = chromium()
    report = write_report(finished_run[0], out=tmp_path / "report")
    page = report.path.read_text(encoding="utf-8")
    check = report.path.with_name("check.html")
    check.write_text(page.replace("</body>", CHECK + "</body>"), encoding="utf-8")

    proc = run_chromium(binary, tmp_path / "profile-1", "--dump-dom", "--virtual-time-budget=10000",
                        "--window-size=1320,2400", check.as_uri())
    found = re.search(r'<pre id="image-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the check did not run; Chromium printed: {proc.stdout[-1000:]}"
    images = json.loads(html.unescape(found.group(1)))
    assert [i["id"] for i in images] == ["img-curves", "img-confusion", "img-per_class", "img-misclassified"]
    for img in images:
        assert img["loaded"], img
        assert img["natural"][0] > 200 and img["shown"][0] > 200 and img["shown"][1] > 100, img

    # And a screenshot of the real page is not blank: text, plots and the digits grid are drawn.
    shot = tmp_path / "report.png"
    run_chromium(binary, tmp_path / "profile-2", f"--screenshot={shot}", "--window-size=1320,2400",
                 report.path.as_uri())
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2400, 1320)
    assert (pixels < 128).mean() > 0.01 and pixels.std() > 20
