"""Launcher logic that needs no engine: validation, expressions, placement, events, config."""

from __future__ import annotations

import asyncio
import pathlib
import random
import time

import pytest

from dockyard.core.oci import MANIFEST_TYPES
from dockyard.core.signing import github_signature, sign
from launcher.config import InstanceType, LauncherSettings
from launcher.errors import InvalidRequest, NoCapacity
from launcher.events import authorized, pushes
from launcher.expressions import compile_expression
from launcher.model import (
    Resources,
    parse_service,
    parse_task_definition,
    rollout_bounds,
    tag_matches,
    task_resources,
)
from launcher.placement import Placer, check_never_fits, choose
from launcher.store import Store
from launcher.tasks import _same_repository, health_budget, image_ref

DIGEST = "sha256:" + "ab" * 32


def td(**container) -> dict:
    base = {"name": "app", "image": "acme/web", "cpu": 256, "memory": 64}
    return {"family": "web", "containerDefinitions": [{**base, **container}]}


# --- task definitions -------------------------------------------------------------------------


def test_task_definition_defaults_and_resources():
    parsed = parse_task_definition({
        "family": "web",
        "containerDefinitions": [
            {"name": "app", "image": "acme/web", "cpu": 256, "memory": 64,
             "portMappings": [{"containerPort": 8080}, {"name": "admin"}],
             "environment": {"A": "1"},
             "healthCheck": {"command": "wget -q -O- http://127.0.0.1:8080/"}},
            {"name": "side", "image": "acme/side@" + DIGEST, "memoryReservation": 16},
        ],
    })
    app = parsed["containerDefinitions"][0]
    assert app["healthCheck"] == {
        "command": ["CMD-SHELL", "wget -q -O- http://127.0.0.1:8080/"],
        "interval": 30.0, "timeout": 5.0, "retries": 3, "startPeriod": 0.0,
    }
    assert app["environment"] == [{"name": "A", "value": "1"}]
    assert app["portMappings"][0]["hostPort"] == 8080
    res = task_resources(parsed)
    assert res == Resources(cpu=256, memory=80, fixed_ports=frozenset({8080}), dynamic_ports=1)


def test_task_level_cpu_and_memory_reserve_at_least_that():
    parsed = parse_task_definition({**td(), "cpu": 1024, "memory": 32})
    assert task_resources(parsed).cpu == 1024 and task_resources(parsed).memory == 64


@pytest.mark.parametrize("body, message", [
    ({"family": "bad family!", "containerDefinitions": [td()["containerDefinitions"][0]]},
     "family"),
    ({"family": "web", "containerDefinitions": []}, "non-empty"),
    (td(memory=None), "needs memory"),
    (td(cpu=-1), "cpu"),
    (td(portMappings=[{"containerPort": 80, "hostPort": 81}]), "hostPort must equal"),
    (td(healthCheck={"command": ["WHAT", "x"]}), "healthCheck.command"),
    (td(healthCheck={"command": "true", "interval": 0}), "interval"),
    (td(environment=[{"name": "1BAD", "value": "x"}]), "variable name"),
    (td(image="has space"), "image"),
])
def test_task_definition_rejects(body, message):
    with pytest.raises(InvalidRequest, match=message):
        parse_task_definition(body)


def test_duplicate_fixed_host_ports_in_one_task_rejected():
    body = {"family": "web", "containerDefinitions": [
        {"name": "a", "image": "x", "memory": 8, "portMappings": [{"containerPort": 80}]},
        {"name": "b", "image": "y", "memory": 8, "portMappings": [{"hostPort": 80}]},
    ]}
    with pytest.raises(InvalidRequest, match="once per task"):
        parse_task_definition(body)


# --- services, tags, rollout bounds -----------------------------------------------------------


def test_service_validation_and_defaults():
    svc = parse_service({"name": "web", "repository": "acme/web", "taskDefinition": "web:3"})
    assert svc["tags"] == ["*"] and svc["revision"] == 3 and svc["desiredCount"] == 1
    assert svc["deploymentConfiguration"] == {"minimumHealthyPercent": 100,
                                              "maximumPercent": 200}
    for bad in ({"name": "Web"}, {"repository": "Acme/Web"}, {"taskDefinition": "web:x"},
                {"placementStrategy": [{"type": "binpack", "field": "disk"}]},
                {"placementConstraints": [{"type": "memberOf", "expression": "zone = a"}]},
                {"deploymentConfiguration": {"maximumPercent": 50}}):
        with pytest.raises(InvalidRequest):
            parse_service({"name": "web", "repository": "acme/web", "taskDefinition": "web",
                           **bad})


def test_tag_patterns_and_signature_tags():
    assert tag_matches(["v*"], "v1.2")
    assert not tag_matches(["v*"], "latest")
    assert tag_matches(["*"], "latest")
    # cosign signatures live under sha256-<hex>.sig tags: never a deployment.
    assert not tag_matches(["*"], "sha256-" + "ab" * 32 + ".sig")


@pytest.mark.parametrize("desired, lo, hi, expected", [
    (2, 100, 200, (2, 4)), (3, 50, 150, (2, 4)), (1, 0, 100, (0, 1)), (0, 100, 200, (0, 0)),
    (4, 75, 125, (3, 5)),
])
def test_rollout_bounds_round_like_ecs(desired, lo, hi, expected):
    config = {"minimumHealthyPercent": lo, "maximumPercent": hi}
    assert rollout_bounds(desired, config) == expected


# --- expressions ------------------------------------------------------------------------------


@pytest.mark.parametrize("source, subject, expected", [
    ("attribute:zone == a", {"zone": "a"}, True),
    ("attribute:zone == a", {"zone": "b"}, False),
    ("attribute:zone != a", {}, True),
    ("attribute:zone in [a, b]", {"zone": "b"}, True),
    ("attribute:zone not in (a, b)", {"zone": "c"}, True),
    ("attribute:gpu exists", {"gpu": "1"}, True),
    ("attribute:gpu !exists", {"gpu": "1"}, False),
    ("attribute:disk =~ ssd*", {"disk": "ssd-nvme"}, True),
    ("instanceType == small and attribute:zone == a", {"instanceType": "small", "zone": "b"},
     False),
    ("instanceType == small or attribute:zone == a", {"instanceType": "big", "zone": "a"}, True),
    ("attribute:zone == a && attribute:rack == 1 || instanceType == x",
     {"zone": "a", "rack": "1", "instanceType": "y"}, True),
])
def test_expressions(source, subject, expected):
    assert compile_expression(source).matches(subject) is expected


@pytest.mark.parametrize("bad", ["", "zone == a", "attribute:zone ==", "attribute:zone in a",
                                 "attribute:zone == a and"])
def test_expression_errors(bad):
    with pytest.raises(InvalidRequest):
        compile_expression(bad)


# --- placement --------------------------------------------------------------------------------


def inst(name, cpu=1024, memory=1024, status="ACTIVE", network=None, **attrs):
    return {"id": f"id-{name}", "name": name, "type": "t", "cpu": cpu, "memory": memory,
            "attributes": attrs, "network": network or f"net-{name}", "status": status,
            "reachable": True, "pool": False}


def task(instance, cpu=0, memory=0, service="web", ports=()):
    return {"instanceId": f"id-{instance}", "cpu": cpu, "memory": memory, "service": service,
            "ports": list(ports)}


RES = Resources(cpu=256, memory=128, fixed_ports=frozenset(), dynamic_ports=0)
BINPACK = [{"type": "binpack", "field": "cpu"}]
SPREAD = [{"type": "spread", "field": "instanceId"}]
PORTS = (20000, 20010)


def pick(instances, tasks, res=RES, strategy=BINPACK, constraints=(), service="web"):
    return choose(instances, tasks, res, service=service, strategy=strategy,
                  constraints=list(constraints), port_range=PORTS, rng=random.Random(1))


def test_binpack_prefers_the_fullest_instance_that_fits():
    instances = [inst("a"), inst("b"), inst("c")]
    tasks = [task("b", cpu=512), task("c", cpu=900)]  # c has 124 left: too little
    assert pick(instances, tasks).instance["name"] == "b"


def test_binpack_memory_field():
    instances = [inst("a"), inst("b")]
    tasks = [task("a", cpu=700, memory=100), task("b", cpu=100, memory=800)]
    strategy = [{"type": "binpack", "field": "memory"}]
    assert pick(instances, tasks, strategy=strategy).instance["name"] == "b"


def test_spread_on_instance_and_attribute():
    instances = [inst("a", zone="z1"), inst("b", zone="z1"), inst("c", zone="z2")]
    tasks = [task("a"), task("c"), task("c", service="other")]
    assert pick(instances, tasks, strategy=SPREAD).instance["name"] == "b"
    zone = [{"type": "spread", "field": "attribute:zone"}]
    tasks = [task("a"), task("b")]  # z1 has two of ours, z2 none
    assert pick(instances, tasks, strategy=zone).instance["name"] == "c"


def test_random_picks_among_fitting_only():
    instances = [inst("a", cpu=100), inst("b"), inst("c")]
    seen = {pick(instances, [], strategy=[{"type": "random"}]).instance["name"]
            for _ in range(30)}
    assert seen <= {"b", "c"} and seen


def test_constraints_distinct_instance_and_member_of():
    instances = [inst("a", zone="z1"), inst("b", zone="z2")]
    chosen = pick(instances, [task("a")], constraints=[{"type": "distinctInstance"}])
    assert chosen.instance["name"] == "b"
    member = [{"type": "memberOf", "expression": "attribute:zone == z1"}]
    assert pick(instances, [], strategy=SPREAD, constraints=member).instance["name"] == "a"
    with pytest.raises(NoCapacity, match="distinctInstance"):
        pick(instances, [task("a"), task("b")], constraints=[{"type": "distinctInstance"}])


def test_draining_and_unreachable_instances_are_skipped():
    instances = [inst("a", status="DRAINING"), {**inst("b"), "reachable": False}, inst("c")]
    assert pick(instances, []).instance["name"] == "c"


def test_ports_are_per_network_and_dynamic_ports_avoid_taken_ones():
    shared = [inst("a", network="host"), inst("b", network="host"), inst("c")]
    res = Resources(cpu=0, memory=0, fixed_ports=frozenset({8080}), dynamic_ports=2)
    tasks = [task("a", ports=[8080, 20000]), task("b", ports=[20001])]
    chosen = pick(shared, tasks, res=res, strategy=[])
    assert chosen.instance["name"] == "c"  # a and b share the host network where 8080 is used
    assert chosen.ports == [20000, 20001]
    res = Resources(cpu=0, memory=0, fixed_ports=frozenset(), dynamic_ports=2)
    only_a = choose(shared[:1], tasks, res, service="web", strategy=[], constraints=[],
                    port_range=PORTS, all_instances=shared)
    assert only_a.ports == [20002, 20003]  # b's 20001 counts: same network


def test_no_fit_names_every_refusal():
    instances = [inst("a", cpu=200), inst("b", memory=100), inst("c", status="DRAINING")]
    with pytest.raises(NoCapacity) as info:
        pick(instances, [])
    message = info.value.message
    assert "a: cpu short by 56" in message
    assert "b: memory short by 28 MiB" in message
    assert "c: DRAINING" in message
    assert not info.value.never


def test_never_fits_names_the_shortfall():
    types = [InstanceType("small", 512, 256), InstanceType("large", 2048, 1024)]
    check_never_fits(Resources(2048, 1024, frozenset(), 0), types, [])
    with pytest.raises(NoCapacity) as info:
        check_never_fits(Resources(4096, 64, frozenset(), 0), types, [])
    assert info.value.never
    assert "cpu short by 2048 units (largest: type 'large' with 2048)" in info.value.message
    with pytest.raises(NoCapacity, match="memory short by 1024 MiB"):
        check_never_fits(Resources(64, 2048, frozenset(), 0), types, [])
    with pytest.raises(NoCapacity, match="no single type has both"):
        check_never_fits(Resources(2048, 1024, frozenset(), 0),
                         [InstanceType("cpu", 2048, 64), InstanceType("mem", 64, 1024)], [])


async def test_concurrent_placements_never_overcommit(tmp_path: pathlib.Path):
    store = Store(data_dir=tmp_path)
    await store.open()
    try:
        for name in ("a", "b"):
            await store.upsert_instance({"name": name, "endpoint": f"unix:///nowhere/{name}",
                                         "type": None, "cpu": 1024, "memory": 4096,
                                         "network": name, "origin": "api"})
        placer = Placer(store, {}, (20000, 20100), provision=None)
        res = Resources(cpu=256, memory=64, fixed_ports=frozenset({8080}), dynamic_ports=1)

        async def one(n: int):
            return await placer.place(
                res,
                task={"id": f"t{n}", "service": "web", "family": "web", "revision": 1,
                      "image": "acme/web@" + DIGEST},
                strategy=[{"type": "random"}], constraints=[],
            )

        results = await asyncio.gather(*[one(n) for n in range(20)], return_exceptions=True)
        placed = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, NoCapacity)]
        # A fixed host port allows one task per network: two instances, two tasks.
        assert len(placed) == 2 and len(refused) == 18
        tasks = await store.list_tasks(active=True)
        by_instance: dict[str, list] = {}
        for t in tasks:
            by_instance.setdefault(t["instanceId"], []).append(t)
        assert sorted(len(v) for v in by_instance.values()) == [1, 1]

        # Without the port, CPU is the limit: 4 per instance, never 5.
        res = Resources(cpu=256, memory=64, fixed_ports=frozenset(), dynamic_ports=1)
        results = await asyncio.gather(*[one(100 + n) for n in range(20)],
                                       return_exceptions=True)
        tasks = await store.list_tasks(active=True)
        for inst_id in {t["instanceId"] for t in tasks}:
            assert sum(t["cpu"] for t in tasks if t["instanceId"] == inst_id) <= 1024
        assert sum(1 for r in results if not isinstance(r, BaseException)) == 6
        for inst_id in {t["instanceId"] for t in tasks}:  # each its own network here
            ports = [p for t in tasks if t["instanceId"] == inst_id for p in t["ports"]]
            assert len(ports) == len(set(ports)), ports
    finally:
        await store.close()


# --- events -----------------------------------------------------------------------------------


def push_event(**target):
    base = {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "digest": DIGEST, "size": 10, "length": 10, "repository": "acme/web",
            "url": f"http://reg.example:5000/v2/acme/web/manifests/{DIGEST}", "tag": "v1"}
    return {"id": "e1", "timestamp": "2024-01-01T00:00:00Z", "action": "push",
            "target": {**base, **target}, "request": {"host": "other:1"}, "actor": {},
            "source": {"addr": "x"}}


def test_pushes_keeps_tagged_manifest_pushes_only():
    envelope = {"events": [
        push_event(),
        push_event(mediaType="application/vnd.docker.image.rootfs.diff.tar.gzip"),  # a layer
        {**push_event(), "action": "pull"},
        push_event(tag=None),  # pushed by digest
        push_event(repository="Bad/Name"),
        push_event(digest="sha256:short"),
        push_event(url=None),
        "garbage",
    ]}
    found = pushes(envelope)
    assert [(p.repository, p.tag, p.digest, p.registry) for p in found] == [
        ("acme/web", "v1", DIGEST, "reg.example:5000"),
        ("acme/web", "v1", DIGEST, "other:1"),  # no url: the request's host
    ]
    assert pushes({"nope": 1}) == [] and pushes([]) == []
    assert "application/vnd.oci.image.index.v1+json" in MANIFEST_TYPES


def test_inbound_authentication():
    body = b'{"events": []}'
    assert authorized({"Authorization": "Bearer s3"}, body, "s3", None)
    assert authorized({"Authorization": "bearer s3"}, body, "s3", None)
    assert not authorized({"Authorization": "Bearer s4"}, body, "s3", None)
    assert not authorized({"Authorization": "Basic s3"}, body, "s3", None)
    assert not authorized({}, body, None, None)
    now = time.time()
    good = sign(["k"], body, timestamp=int(now))
    assert authorized({"Dockyard-Signature": good}, body, None, "k", now=now)
    assert not authorized({"Dockyard-Signature": good}, body + b" ", None, "k", now=now)
    assert not authorized({"Dockyard-Signature": good}, body, None, "k", now=now + 600)
    rotated = f"t={int(now)},v1={'0' * 64},v1={good.split('v1=')[1]}"
    assert authorized({"Dockyard-Signature": rotated}, body, None, "k", now=now)
    assert authorized({"X-Hub-Signature-256": github_signature("k", body)}, body, None, "k")
    assert not authorized({"X-Hub-Signature-256": github_signature("j", body)}, body, None, "k")


# --- config and small helpers -----------------------------------------------------------------


def test_settings_from_dict(tmp_path):
    s = LauncherSettings.from_dict({
        "enabled": True, "registry": "127.0.0.1:5000",
        "registry_auth": {"username": "robot$deploy", "password": "pw"},
        "instance_types": {"small": {"cpu": 512, "memory": 256}},
        "instances": [{"endpoint": "unix:///run/x.sock", "type": "small",
                       "attributes": {"zone": "a"}}],
        "providers": {"local": {"run_root": "/run/x"}},
        "warm_pool": {"small": 1}, "port_range": "30000-30100", "poll_interval": 0.1,
    }, tmp_path)
    assert s.enabled and s.state_dir == tmp_path / "launcher"
    assert s.instance_types["small"].cpu == 512 and s.instances[0].attributes == {"zone": "a"}
    assert s.local_provider is not None and s.warm_pool == {"small": 1}
    assert s.port_range == (30000, 30100) and s.poll_interval == 0.1
    assert s.registry_auth.as_auth_config() == {"username": "robot$deploy", "password": "pw"}
    assert not LauncherSettings.from_dict({}, tmp_path).enabled
    for bad in ({"instance_types": {"x": {"cpu": 0, "memory": 1}}},
                {"instances": [{"endpoint": "unix:///x", "type": "nope"}]},
                {"warm_pool": {"small": 1}, "instance_types": {"small": {"cpu": 1, "memory": 1}}},
                {"port_range": "9-1"}):
        with pytest.raises(InvalidRequest):
            LauncherSettings.from_dict(bad, tmp_path)


def test_images_are_always_pinned_by_digest():
    assert image_ref("127.0.0.1:5000", "acme/web", DIGEST) == f"127.0.0.1:5000/acme/web@{DIGEST}"
    assert image_ref(None, "acme/web", DIGEST) == f"acme/web@{DIGEST}"
    assert _same_repository("acme/web", "acme/web")
    assert _same_repository("acme/web:1", "acme/web")
    assert _same_repository(f"reg:5000/acme/web@{DIGEST}", "acme/web")
    assert not _same_repository("acme/web-2", "acme/web")
    assert not _same_repository("other/acme/web", "acme/web")


def test_health_budget_covers_the_check_worst_case(tmp_path):
    settings = LauncherSettings.from_dict({"health_grace": 5, "stable_seconds": 2}, tmp_path)
    parsed = parse_task_definition(td(healthCheck={"command": "true", "interval": 1,
                                                   "timeout": 1, "retries": 3,
                                                   "startPeriod": 4}))
    assert health_budget(parsed, settings) == 4 + 2 * 4 + 5
    assert health_budget(parse_task_definition(td()), settings) == 2 + 5


def test_cli_table_cells():
    from launcher.cli import table

    out = table([{"id": "a" * 32, "n": None, "ok": True, "l": [1, 2], "d": {"k": "v"}}],
                [("ID", "id"), ("N", "n"), ("OK", "ok"), ("L", "l"), ("D", "d")])
    assert out.splitlines()[1].split() == ["a" * 12, "-", "yes", "1,2", "k=v"]
