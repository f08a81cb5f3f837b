"""Real clients against a real server: docker push/pull/run and skopeo round-trips."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from tests.support.dockerd import DockerDaemon
from tests.support.require import require_binary
from tests.support.server import DockyardServer


def layer_bytes(seed: str, size: int = 256 * 1024) -> bytes:
    # Incompressible-ish, distinct per seed, so layers never collide across tests.
    out = bytearray()
    block = seed.encode()

    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    exe = require_binary("skopeo")
    res = subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"skopeo {' '.join(args)}: {res.stderr}"
    return res


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with DockyardServer(tmp_path_factory.mktemp("e2e") / "data") as srv:
        yield srv


def test_docker_push_pull_run_and_shared_layers(
    server: DockyardServer, dockerd: DockerDaemon, busybox: str
) -> None:
    ref = f"{server.host}/acme/web"
    dockerd.build_layers(busybox, f"{ref}:1", [layer_bytes("a"), layer_bytes("b")])
    out = dockerd.cli("push", f"{ref}:1").stdout
    assert "digest: sha256:" in out
    digest = out.split("digest: ")[1].split()[0]

    # A second tag sharing every layer of the first, plus one: docker skips what exists.
    dockerd.build_layers(f"{ref}:1", f"{ref}:2", [layer_bytes("c")])
    out2 = dockerd.cli("push", f"{ref}:2").stdout
    assert "Layer already exists" in out2

    dockerd.cli("rmi", f"{ref}:1", f"{ref}:2")
    dockerd.cli("pull", f"{ref}:2")
    run = dockerd.cli(
        "run",
        "--rm",
        "--network",
        "none",
        f"{ref}:2",
        "sh",
        "-c",
        "cat /data/*.bin | wc -c",
    )
    assert run.stdout.strip() == str(3 * 256 * 1024)
    dockerd.cli("pull", f"{ref}@{digest}")

    tags = json.loads(_get(f"{server.url}/v2/acme/web/tags/list"))
    assert tags == {"name": "acme/web", "tags": ["1", "2"]}


def test_skopeo_round_trip_through_oci_layout(
    server: DockyardServer, dockerd: DockerDaemon, busybox: str, tmp_path: Path
) -> None:
    ref = f"{server.host}/acme/tools"
    dockerd.build_layers(busybox, f"{ref}:src", [layer_bytes("skopeo")])
    dockerd.cli("push", f"{ref}:src")
    layout = tmp_path / "layout"
    skopeo("copy", "--src-tls-verify=false", f"docker://{ref}:src", f"oci:{layout}:img")
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:img", f"docker://{ref}:copy")
    inspect = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}:copy").stdout)
    src = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}:src").stdout)
    assert inspect["Layers"] == src["Layers"]
    assert sorted(inspect["RepoTags"]) == ["copy", "src"]
    # And back out, verifying every blob digest on the way.
    out = tmp_path / "out"
    skopeo("copy", "--src-tls-verify=false", f"docker://{ref}:copy", f"oci:{out}:img")
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "img"


def test_multi_platform_index_round_trips(server: DockyardServer, tmp_path: Path) -> None:
    """An OCI layout with an index of two platform manifests, copied with --all both ways."""
    from tests.support.oci_layout import write_multi_platform_layout

    src = tmp_path / "multi"
    index_digest = write_multi_platform_layout(src, tag="multi")
    ref = f"docker://{server.host}/acme/multi:1"
    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{src}:multi", ref)
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", ref).stdout)
    assert raw["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert len(raw["manifests"]) == 2
    back = tmp_path / "back"
    skopeo("copy", "--all", "--src-tls-verify=false", ref, f"oci:{back}:multi")
    index = json.loads((back / "index.json").read_text())
    assert index["manifests"][0]["digest"] == index_digest
    for m in raw["manifests"]:
        blob = back / "blobs" / "sha256" / m["digest"].split(":")[1]
        assert blob.exists()


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read().decode()
