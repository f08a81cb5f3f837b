"""oras (the OCI artifacts client, PyPI `oras`) pushes and pulls an artifact unchanged."""

from __future__ import annotations

from pathlib import Path

import oras.client

from tests.support.server import DockyardServer


def test_oras_push_and_pull_an_artifact(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # oras only pushes files below the working directory
    artifact = tmp_path / "sbom.json"
    artifact.write_text('{"packages": ["busybox"]}\n')
    with DockyardServer(tmp_path / "data") as server:
        client = oras.client.OrasClient(hostname=server.host, insecure=True)
        pushed = client.push(files=["sbom.json"], target=f"{server.host}/acme/sbom:v1")
        assert pushed.status_code == 201
        out = tmp_path / "out"
        files = client.pull(target=f"{server.host}/acme/sbom:v1", outdir=str(out))
        assert [Path(f).read_text() for f in files] == [artifact.read_text()]
        assert client.get_tags(f"{server.host}/acme/sbom") == ["v1"]
