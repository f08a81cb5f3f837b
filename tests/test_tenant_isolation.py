"""Tenant isolation is a rule of the metadata interface: every statement on a customer's rows
is keyed by that customer (its `customer_id`, or a `repo_id` the code got from a lookup keyed by
`customer_id`). Checked statically over every SQL string of the tenant-scoped modules, and by
behaviour: a customer's API sees nothing of another's, even with the same names and digests.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from aiohttp.test_utils import TestClient

from dockyard.app import build_app
from registry.config import load_config
from tests.apiclient import OCI_MANIFEST, push_image, sha256

ROOT = Path(__file__).resolve().parents[1]
# Modules whose statements read or write one customer's rows. gc.py walks every customer by
# design (one collector for the store) and blob_index is global by design (stored once).
TENANT_MODULES = ["blobs", "manifests", "tags", "uploads", "tenants", "usage", "catalog"]
TENANT_TABLES = {
    "repositories",
    "held_blobs",
    "repo_blobs",
    "manifests",
    "manifest_refs",
    "tags",
    "uploads",
}
KEYS = re.compile(r"\b(customer_id|repo_id)\b")
# Statements that may touch tenant tables without a key, each with its reason.
ALLOWED = {
    # The catalog of everything: filtered to what the caller may pull by the handler.
    "SELECT name FROM repositories",
}


def sql_strings(path: Path) -> list[tuple[int, str]]:
    """Every string literal (joined implicit concatenations and f-strings) that looks like SQL."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        else:
            continue
        if re.match(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", text, re.I):
            found.append((node.lineno, " ".join(text.split())))
    return found


def tables_of(sql: str) -> set[str]:
    return {
        m.group(2).lower() for m in re.finditer(r"\b(FROM|JOIN|INTO|UPDATE)\s+([a-z_]+)", sql, re.I)
    }


def test_every_tenant_statement_is_keyed_by_its_customer() -> None:
    unkeyed = []
    checked = 0
    for name in TENANT_MODULES:
        path = ROOT / "registry" / "metadata" / f"{name}.py"
        if not path.exists():
            continue
        for line, sql in sql_strings(path):
            if not tables_of(sql) & TENANT_TABLES:
                continue
            checked += 1
            if KEYS.search(sql) or any(sql.startswith(a) for a in ALLOWED):
                continue
            unkeyed.append(f"{path.relative_to(ROOT)}:{line}: {sql[:120]}")
    assert checked > 30  # the check sees the statements it is meant to
    assert not unkeyed, "statements on customer rows without a customer key:\n" + "\n".join(unkeyed)


def test_the_check_finds_an_unkeyed_statement(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('Q = "SELECT digest FROM tags WHERE name = ?"\n')
    ((_line, sql),) = sql_strings(bad)
    assert tables_of(sql) & TENANT_TABLES and not KEYS.search(sql)


async def test_same_names_and_digests_in_two_customers_stay_apart(
    aiohttp_client, tmp_path: Path
) -> None:
    """Two customers push the same bytes under the same repository name within their
    namespace: tags, deletes, referrers, tag lists and uploads of one never show in the
    other's."""
    client: TestClient = await aiohttp_client(
        await build_app(load_config(None, data_dir=tmp_path / "data"))
    )
    digest, body = await push_image(client, "acme/app", "v1", [b"same layer"], config=b"{}")
    other, _ = await push_image(client, "globex/app", "v1", [b"same layer"], config=b"{}")
    assert digest == other == sha256(body)
    await push_image(client, "acme/app", "only-acme", [b"acme private layer"])

    tags = await (await client.get("/v2/globex/app/tags/list")).json()
    assert tags["tags"] == ["v1"]
    resp = await client.get("/v2/globex/app/manifests/only-acme", headers={"Accept": OCI_MANIFEST})
    assert resp.status == 404
    private = sha256(b"acme private layer")
    assert (await client.head(f"/v2/globex/app/blobs/{private}")).status == 404
    # A mount without `from` finds blobs of the caller's own customer only: another
    # customer's copy never satisfies it, and the upload starts from zero (202).
    # spec: oci-distribution-spec.md "Mounting a blob from another repository".
    resp = await client.post(f"/v2/globex/app/blobs/uploads/?mount={private}")
    assert resp.status == 202

    # Deleting in one customer leaves the other's copy whole.
    resp = await client.delete(f"/v2/acme/app/manifests/{digest}")
    assert resp.status == 202
    assert (await client.get(f"/v2/acme/app/manifests/{digest}")).status == 404
    resp = await client.get(f"/v2/globex/app/manifests/{digest}", headers={"Accept": OCI_MANIFEST})
    assert resp.status == 200 and sha256(await resp.read()) == digest
    layer = sha256(b"same layer")
    got = await client.get(f"/v2/globex/app/blobs/{layer}")
    assert got.status == 200 and await got.read() == b"same layer"

    # An upload session of one customer is unknown under the other's name.
    resp = await client.post("/v2/acme/app/blobs/uploads/")
    upload_id = resp.headers["Location"].rstrip("/").rsplit("/", 1)[1].split("?")[0]
    assert (await client.get(f"/v2/globex/app/blobs/uploads/{upload_id}")).status == 404
