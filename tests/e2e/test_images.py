"""The built images hold no private key in any layer, and run as a non-root user (``docker save``,
``docker image inspect``; run by ``scripts/e2e.sh compose`` after the build)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

VERSION = os.environ.get("IOTAD_VERSION", "0.1.0")
IMAGES = [f"iotad-server:{VERSION}", f"iotad-client:{VERSION}"]
# PEM and OpenSSH private keys; key-looking file names (the federation's own and common ones).
# A whole PEM block, not the marker alone (TLS libraries carry the marker strings to parse keys).
KEY_CONTENT = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----\r?\n(?:[A-Za-z0-9+/=:, -]*\r?\n){2,}"
                         rb"[A-Za-z0-9+/=\r\n]*-----END")
KEY_NAMES = re.compile(r"(?:^|/)(?:node_key|server\.key|ca\.key|id_(?:rsa|ecdsa|ed25519)|[^/]*\.key)$")
# Public test vectors that Debian and PyPI packages ship (test suites; GnuTLS's built-in self-test keys):
# not secrets, and not ours. Nothing of iotad, and no other path, may match.
THIRD_PARTY_TESTS = re.compile(r"site-packages/[^/]+/(?:.*/)?(?:tests?|SelfTest)/|^usr/lib/[^/]+/libgnutls\.so\.")


def _files(image: str, out: Path) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Every regular file of every layer of ``image`` (as ``docker save`` writes it)."""
    archive = out / "image.tar"
    subprocess.run(["docker", "save", "-o", str(archive), image], check=True, timeout=600)
    layers = 0
    with tarfile.open(archive) as outer:
        for m in outer.getmembers():
            f = outer.extractfile(m) if m.isfile() else None
            if f is None:
                continue
            data = f.read()
            if len(data) < 262 or data[257:262] != b"ustar":  # a layer is itself a tar
                continue
            layers += 1
            with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                for member in layer.getmembers():
                    if member.isfile():
                        yield layer, member
    assert layers, f"{image}: no layer found in docker save output"


@pytest.mark.parametrize("image", IMAGES)
def test_no_private_key_in_any_layer(image: str, tmp_path: Path) -> None:
    found: list[str] = []
    scanned = 0
    for layer, m in _files(image, tmp_path):
        if THIRD_PARTY_TESTS.search(m.name):
            continue
        scanned += 1
        if KEY_NAMES.search(m.name):
            found.append(f"{m.name} (name)")
            continue
        if m.size > 4 << 20:
            continue  # libraries and wheels: a key file is small
        f = layer.extractfile(m)
        if f is not None and KEY_CONTENT.search(f.read()):
            found.append(f"{m.name} (content)")
    print(f"\n{image}: {scanned} files scanned")
    assert scanned > 1000 and found == [], "\n".join(found)


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_a_non_root_user(image: str) -> None:
    out = subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True, check=True, timeout=60)
    user = json.loads(out.stdout)[0]["Config"]["User"]
    assert user and user.split(":")[0] not in ("0", "root"), user


def test_the_scan_finds_the_federations_own_keys(tmp_path: Path) -> None:
    from iotad.deploy import generate_certs

    certs = generate_certs(tmp_path, devices=["device-0"])
    keys = [certs.server_key, certs.root / "ca.key", certs.device_private_key("device-0")]
    for key in keys:
        assert KEY_NAMES.search(str(key.relative_to(tmp_path))) and KEY_CONTENT.search(key.read_bytes()), key
    assert not KEY_CONTENT.search(certs.ca_cert.read_bytes() + certs.device_public_key("device-0").read_bytes())


def test_no_dangling_builder_stage() -> None:
    """scripts/build-images.sh prunes the builder stage's untagged image (about 1.6 GB) and only that."""
    left = subprocess.run(["docker", "images", "-q", "--filter", "dangling=true",
                           "--filter", "label=io.iotad.stage=builder"],
                          capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert left == [], f"dangling builder images left by the build: {left}"
    for image in IMAGES:
        labels = subprocess.run(["docker", "image", "inspect", "-f", "{{json .Config.Labels}}", image],
                                capture_output=True, text=True, timeout=60, check=True).stdout
        assert "io.iotad.stage" not in labels, f"{image} carries the builder stage's label"
