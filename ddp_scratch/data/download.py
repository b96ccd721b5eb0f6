"""`launch.py download mnist|fashion-mnist --to DIR`: fetch the four IDX files and verify the
SHA-256 of the DECOMPRESSED data (mirrors recompress, the content must not change).

A file is written only after its checksum matched (atomically), so a failed or tampered download
never leaves a bad file behind, and files already present and valid are not fetched again.
"""
import gzip
import hashlib
import os
import urllib.error
import urllib.request
import zlib

from ..errors import DataError, UserError
from ..fsutil import atomic_write_bytes
from .images import MNIST_FILES

DATASETS = {
    "mnist": {
        "url": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "sha256": {
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    },
    # Identical to Debian's dataset-fashion-mnist package (checked on its files).
    "fashion-mnist": {
        "url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "sha256": {
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
    },
}


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _ways_forward(name, to):
    deb = ("; or Debian's package: apt-get install dataset-fashion-mnist, then "
           "--set data.path=/usr/share/datasets/fashion-mnist") if name == "fashion-mnist" else ""
    return (f"ways forward: --base-url URL of a mirror that holds the .gz files; or copy the four files "
            f"({', '.join(MNIST_FILES.values())}, raw or .gz) into {to} by hand{deb}")


def download(name, to, base_url=None, timeout=60.0, log=print):
    if name not in DATASETS:
        raise UserError(f"download: unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    to = os.path.expanduser(to)
    if os.path.exists(to) and not os.path.isdir(to):
        raise UserError(f"download --to {to} is a file, expected a folder")
    spec = DATASETS[name]
    base = (base_url or spec["url"]).rstrip("/") + "/"
    created = not os.path.exists(to)
    try:
        _fetch_all(name, spec, base, to, timeout, log)
    finally:
        if created and os.path.isdir(to) and not os.listdir(to):
            os.rmdir(to)             # a failed first file leaves no empty folder behind
    return to


def _fetch_all(name, spec, base, to, timeout, log):
    done = 0
    for stem in MNIST_FILES.values():
        dest = os.path.join(to, stem)
        want = spec["sha256"][stem]
        if os.path.isfile(dest):
            with open(dest, "rb") as f:
                if _sha256(f.read()) == want:
                    log(f"{dest}: present, checksum ok")
                    done += 1
                    continue
        url = base + stem + ".gz"
        kept = f" (the {done} file(s) already verified stay in {to})" if done else ""
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                packed = r.read()
        except urllib.error.HTTPError as e:
            raise DataError(f"download {url}: the server answered {e.code} {e.reason}{kept}; "
                            + _ways_forward(name, to)) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise DataError(f"download {url}: the network or the server cannot be reached ({reason}){kept}; "
                            + _ways_forward(name, to)) from None
        try:
            raw = gzip.decompress(packed)
        except (OSError, EOFError, zlib.error):
            raise DataError(f"download {url}: not a valid gzip file (truncated or corrupt){kept}") from None
        got = _sha256(raw)
        if got != want:
            raise DataError(f"download {url}: SHA-256 of the decompressed data is {got}, expected {want}; "
                            f"nothing was written for it{kept}")
        atomic_write_bytes(dest, raw)
        done += 1
        log(f"{dest}: downloaded, checksum ok ({len(raw)} bytes)")
