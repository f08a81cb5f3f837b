"""The official OCI Distribution conformance program against dockyard (issue 16).

Three runs must pass every test the program has, with none failed and none skipped: the default
config with OCI_DATA_SPARSE=false, `[registry] sparse_manifests = true` with OCI_DATA_SPARSE=true
(both on filesystem storage), and the default config on S3 (SeaweedFS). Every API and data set
of the program is on (tests/support/oci_conformance.py). The reference registry (distribution
2.8.2) runs under the same settings so its totals sit beside dockyard's in the CI output.

The program comes from scripts/test.sh (built once from ../shared/oci-conformance/); without it
these tests skip, and fail under REQUIRE_E2E=1.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from aiobotocore.session import get_session

from tests.support.oci_conformance import Report, program_binary, run_program
from tests.support.reference import reference_registry
from tests.support.seaweed import SeaweedFS
from tests.support.server import DockyardServer

SPARSE_CONFIG = "[registry]\nsparse_manifests = true\n"


def _fs(request: pytest.FixtureRequest) -> str:
    return ""


def _fs_sparse(request: pytest.FixtureRequest) -> str:
    return SPARSE_CONFIG


def _s3(request: pytest.FixtureRequest) -> str:
    seaweed: SeaweedFS = request.getfixturevalue("seaweed")
    return seaweed.config_text(bucket=f"oci-{secrets.token_hex(6)}")


RUNS = [
    pytest.param(_fs, False, id="filesystem"),
    pytest.param(_fs_sparse, True, id="filesystem-sparse"),
    pytest.param(_s3, False, id="s3"),
]


@pytest.fixture(autouse=True)
def binary() -> str:
    # Before any server starts: a missing program skips (or fails) the test at once.
    return program_binary()


def _record(record_property: Callable[[str, object], None], label: str, report: Report) -> None:
    # tests/conftest.py prints these lines in the terminal summary, passed or not.
    record_property("oci_conformance", f"{label}: {report.totals()}")
    print(f"{label}: {report.explain()}")


def _assert_everything_on(report: Report, *, sparse: bool) -> None:
    """The program ran with every API and data set on (a renamed setting would silently turn
    one off), and the sparse data set exactly as asked."""
    apis, data = report.config.get("apis", {}), report.config.get("data", {})
    assert apis and data, f"no settings in junit.xml: {report.config}"
    off = [k for k, v in apis.items() if v != "true"]
    off += [k for k, v in data.items() if v != "true" and k != "sparse"]
    assert not off, f"settings off: {off}"
    assert data.get("sparse") == ("true" if sparse else "false")


@pytest.mark.parametrize(("config", "sparse"), RUNS)
def test_official_program_passes_every_test(
    config: Callable[[pytest.FixtureRequest], str],
    sparse: bool,
    request: pytest.FixtureRequest,
    record_property: Callable[[str, object], None],
    tmp_path: Path,
) -> None:
    with DockyardServer(tmp_path / "data", config(request)) as server:
        report = run_program(server.host, tmp_path / "results", sparse=sparse)
    _record(record_property, f"dockyard {request.node.callspec.id}", report)
    _assert_everything_on(report, sparse=sparse)
    assert report.total > 700, report.output[-4000:]  # the program ran its whole tree
    assert (report.failed, report.skipped) == (0, 0), report.explain()
    assert report.exit_status == 0, report.output[-4000:]
    sparse_cases = [c for c in report.cases if c.name.startswith("sparse/")]
    # With OCI_DATA_SPARSE=true the program pushes an image manifest whose layer and an index
    # whose child were never pushed, then pulls, heads, lists and deletes them.
    assert bool(sparse_cases) == sparse
    assert any(c.name == "sparse/push/manifest-by-digest" for c in sparse_cases) == sparse


def test_without_sparse_manifests_only_the_sparse_data_set_fails(
    request: pytest.FixtureRequest,
    record_property: Callable[[str, object], None],
    tmp_path: Path,
) -> None:
    # Issue 16, item 2: with the setting off (the default) behaviour is as before: a manifest
    # referring to content never pushed is refused, so the sparse tests fail and nothing else.
    # spec: distribution-spec "Push": a registry MAY reject a manifest whose descriptors reference
    # a manifest or blob that does not exist (MANIFEST_BLOB_UNKNOWN).
    with DockyardServer(tmp_path / "data") as server:
        report = run_program(server.host, tmp_path / "results", sparse=True)
    _record(record_property, "dockyard filesystem, sparse_manifests off, OCI_DATA_SPARSE=true",
            report)
    _assert_everything_on(report, sparse=True)
    failing = {c.name for c in report.not_passed()}
    assert "sparse/push/manifest-by-digest" in failing, report.explain()
    assert all(name.startswith("sparse/") for name in failing), report.explain()
    assert report.skipped == 0, report.explain()
    assert report.exit_status != 0


# -- the reference registry under the same settings ---------------------------------------------


def _create_bucket(seaweed: SeaweedFS, bucket: str) -> None:
    async def create() -> None:
        async with get_session().create_client(
            "s3", endpoint_url=seaweed.endpoint, region_name="us-east-1",
            aws_access_key_id=seaweed.access_key, aws_secret_access_key=seaweed.secret_key,
        ) as s3:
            await s3.create_bucket(Bucket=bucket)

    asyncio.run(create())


def _reference_s3(request: pytest.FixtureRequest) -> dict:
    seaweed: SeaweedFS = request.getfixturevalue("seaweed")
    bucket = f"oci-ref-{secrets.token_hex(6)}"
    _create_bucket(seaweed, bucket)  # distribution does not create its bucket
    # aws-sdk-go in distribution panics at start when AWS_CA_BUNDLE is set (plain HTTP here).
    request.getfixturevalue("monkeypatch").delenv("AWS_CA_BUNDLE", raising=False)
    return {"storage": {
        "filesystem": None,
        "s3": {"accesskey": seaweed.access_key, "secretkey": seaweed.secret_key,
               "region": "us-east-1", "regionendpoint": seaweed.endpoint, "bucket": bucket,
               "secure": False, "v4auth": True},
        # dockyard's S3 default serves blobs itself; so does distribution with this.
        "redirect": {"disable": True},
    }}


REFERENCE_RUNS = [
    pytest.param(lambda request: {}, False, id="filesystem"),
    pytest.param(lambda request: {}, True, id="filesystem-sparse"),
    pytest.param(_reference_s3, False, id="s3"),
]


@pytest.mark.parametrize(("config", "sparse"), REFERENCE_RUNS)
def test_reference_registry_under_the_same_settings(
    config: Callable[[pytest.FixtureRequest], dict],
    sparse: bool,
    request: pytest.FixtureRequest,
    record_property: Callable[[str, object], None],
    tmp_path: Path,
) -> None:
    """The reference's totals for comparison, and proof that a failing registry is reported:
    2.8.2 has no referrers API and accepts out-of-order chunks (the program expects 416)."""
    with reference_registry(config(request)) as registry:
        report = run_program(f"127.0.0.1:{registry.port}", tmp_path / "results", sparse=sparse)
    _record(record_property, f"reference (distribution 2.8.2) {request.node.callspec.id}", report)
    _assert_everything_on(report, sparse=sparse)
    failing = {c.name for c in report.not_passed() if c.status != "skipped"}
    assert {"empty/referrers", "sha256 blobs/chunked out-of-order/blob-patch-chunked"} <= failing
    assert report.exit_status != 0
    assert report.passed > 0
