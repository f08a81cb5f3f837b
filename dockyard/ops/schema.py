"""Every configuration key: its type, default, environment override and meaning.

This table is the configuration reference (`docs/configuration.md` is rendered from it:
`python -m dockyard.ops.schema > docs/configuration.md`), what `dockyard check-config` checks
a file against, and how `DOCKYARD_<SECTION>_<KEY>` overrides reach the sections that other
parts parse themselves (auth, notifications, launcher, quotas, admin). The sections typed in
registry/config.py take their defaults from those dataclasses, so the reference cannot drift
from the code; tests/test_ops_config.py fails when a part adds a key without documenting it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

from registry.config import SECTIONS as TYPED_SECTIONS
from registry.config import Config, ConfigError

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Key:
    name: str
    type: str  # bool, int, float, string, path, duration, size, addr, list, table, …
    doc: str
    default: Any = None  # None: unset / no default
    env: bool = True  # a scalar that DOCKYARD_<SECTION>_<KEY> can set

    def env_name(self, section: str) -> str | None:
        if not self.env or "." in self.name or "[" in self.name:
            return None
        return f"DOCKYARD_{section.upper()}_{self.name.upper()}"


@dataclass(frozen=True)
class Section:
    name: str
    owner: str  # the module whose parser reads it
    doc: str
    keys: tuple[Key, ...]
    # A section whose keys are names chosen by the operator (quotas: one key per customer).
    free_form: Key | None = None

    def key(self, name: str) -> Key | None:
        return next((k for k in self.keys if k.name == name), None)


def _typed(section: str, docs: dict[str, tuple[str, str]]) -> tuple[Key, ...]:
    """Keys of a registry/config.py dataclass, defaults read from the dataclass itself."""
    cls = TYPED_SECTIONS[section]
    out = []
    for f in fields(cls):
        # An undocumented key still works; tests/test_ops_config.py fails until it is documented.
        kind, doc = docs.get(f.name, ("?", ""))
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = None
        out.append(Key(f.name, kind, doc, default))
    return tuple(out)


HTTP = {
    "addr": ("addr", "HOST:PORT to listen on. A non-loopback address needs [auth] or `insecure`."),
    "public_url": (
        "url",
        "The URL clients reach the registry at (e.g. the load balancer's). Used in webhook "
        "`target.url` and the auth realm; unset, the request's Host header is used.",
    ),
    "insecure": (
        "bool",
        "Allow a non-loopback `addr` without authentication (a trusted network only).",
    ),
    "workers": ("int", "Server processes sharing the port (SO_REUSEPORT)."),
    "shutdown_timeout": (
        "float",
        "Seconds SIGTERM waits for requests and uploads in flight before closing them.",
    ),
    "tls_cert": ("path", "PEM certificate chain; with `tls_key`, the listener speaks HTTPS."),
    "tls_key": ("path", "PEM private key of `tls_cert`."),
    "tls_client_ca": (
        "path",
        "PEM CA bundle: clients must present a certificate it signed (mutual TLS).",
    ),
    "metrics_addr": (
        "addr",
        "HOST:PORT of a separate plain-HTTP listener for /metrics (and /healthz, /readyz); "
        "/metrics then leaves the main port.",
    ),
    "header_timeout": (
        "float",
        "Seconds a connection has to deliver a request's headers (from connecting, or from the "
        "first byte of the next request); later: 408 and the connection is closed. 0 disables.",
    ),
    "body_idle_timeout": (
        "float",
        "Seconds a request body may stop moving before 408 and close; a slow upload that keeps "
        "sending is never cut. 0 disables.",
    ),
    "keepalive_timeout": (
        "float",
        "Seconds an idle kept-alive connection stays open between requests.",
    ),
    "max_connections": (
        "int",
        "Connections served at once per process; one more gets 503 UNAVAILABLE with "
        "Retry-After and is closed. 0: the open-file limit (ulimit -n) less 228.",
    ),
}
STORAGE = {
    "driver": ("string", "`filesystem` (blobs under the data directory) or `s3`."),
    "endpoint": ("url", "S3: endpoint URL (unset: AWS S3 of `region`)."),
    "bucket": ("string", "S3: bucket name."),
    "region": ("string", "S3: region."),
    "prefix": ("string", "S3: key prefix inside the bucket (e.g. `registry/`)."),
    "redirect": ("bool", "S3: answer blob GETs with a redirect to a presigned URL."),
    "redirect_expiry": ("int", "S3: seconds a presigned URL stays valid."),
    "part_size_mib": ("int", "S3: multipart part size in MiB (5 or more)."),
    "parts_in_flight": (
        "int",
        "S3: parts of one upload sent while the next arrives; an upload holds at most "
        "(parts_in_flight + 1) × part size in memory.",
    ),
    "access_key": ("string", "S3: access key (unset: the AWS credential chain)."),
    "secret_key": ("string", "S3: secret key (unset: the AWS credential chain)."),
    "create_bucket": ("bool", "S3: create the bucket at start when it does not exist."),
    "max_retries": ("int", "S3: retries of a failed request (exponential backoff, jitter)."),
}
REGISTRY = {
    "default_customer": ("string", "Customer owning single-component names (`web` → library)."),
    "delete_enabled": ("bool", "Allow DELETE of manifests, tags and blobs."),
    "max_manifest_bytes": ("int", "Largest manifest accepted, in bytes."),
    "upload_expiry_seconds": ("int", "Upload sessions idle this long are discarded."),
    "customer_dedup": (
        "bool",
        "A blob HEAD or mount finds layers in any repository of the same customer the caller "
        "may pull.",
    ),
    "sparse_manifests": (
        "bool",
        "Accept image manifests whose layers, and indexes whose children, were never pushed "
        "(mirroring one platform of an index); what is missing stays missing and unreadable.",
    ),
    "read_only": (
        "bool",
        "Maintenance mode: pulls served, writes refused with 405 UNSUPPORTED. SIGUSR1 or "
        "`PUT /admin/read-only` toggles it at runtime.",
    ),
}
GC = {
    "grace_seconds": (
        "float",
        "Nothing written or used more recently is collected; also bounds the time between a "
        "push's blob uploads and its manifest.",
    ),
    "untagged_age_seconds": (
        "float",
        "Untagged manifests older than this are collected; 0 keeps them.",
    ),
    "interval_seconds": (
        "float",
        "Run GC inside the server this often; 0 leaves it to `dockyard gc`.",
    ),
}
METADATA = {
    "url": (
        "url",
        "`postgresql://USER:PASSWORD@HOST:PORT/DB` for PostgreSQL (needed for more than one "
        "node); unset: the embedded SQLite file DATA/metadata.db.",
    ),
    "pool_size": ("int", "PostgreSQL: connections per process."),
    "connect_timeout": ("float", "PostgreSQL: seconds to get a connection before 503."),
    "statement_timeout": ("float", "PostgreSQL: seconds a statement may run."),
    "sqlite_synchronous": (
        "string",
        "SQLite: `full` (a commit survives power loss) or `normal` (survives a process crash).",
    ),
}
CLUSTER = {
    "node_name": (
        "string",
        "This node's name in `dockyard cluster status` and as lease holder; default: the host "
        "name.",
    ),
    "roles": (
        "list",
        "What this node runs: `api` (always), `dispatcher` (webhook deliveries), `gc` (periodic "
        "GC under the cluster-wide lease), `launcher`. Env: comma-separated.",
    ),
    "heartbeat_seconds": (
        "float",
        "How often the node records that it is alive; three missed beats and it is listed "
        "as gone.",
    ),
}
LOG = {
    "level": ("string", "`debug`, `info`, `warning` or `error`."),
    "format": (
        "string",
        "`json` (one object per line), `text` (for people) or `auto` (text on a terminal).",
    ),
    "access_log": ("bool", "Log one line per HTTP request."),
}

AUTH = (
    Key("enabled", "bool", "Require Bearer tokens on /v2/ and serve /auth/token.", False),
    Key("issuer", "string", "`iss` of issued tokens (and the only one accepted).", "dockyard"),
    Key("service", "string", "`aud`/service name clients ask tokens for.", "dockyard"),
    Key(
        "token_lifetime",
        "int",
        "Seconds an access token lives. Removing a user, robot or role ends its pushes and "
        "deletes at once (checked on every write); its pulls may go on until the token expires.",
        300,
    ),
    Key("algorithm", "string", "Token signature: `ES256` or `RS256`.", "ES256"),
    Key(
        "private_key",
        "path",
        "PEM signing key (unset: generated into DATA/auth/signing-key.pem, mode 0600).",
    ),
    Key(
        "public_keys",
        "list of paths",
        "Extra verification keys (PEM), so tokens of a retired key verify during rotation.",
        (),
    ),
    Key(
        "realm",
        "url",
        "Token endpoint announced in challenges (unset: /auth/token on the host the client used).",
    ),
    Key(
        "failed_login_limit",
        "int",
        "Failed logins for one account from one address before that address may not try that "
        "account (429) until the window moves on; other addresses are not affected.",
        5,
    ),
    Key("failed_login_window", "int", "Seconds the failed-login counts cover.", 300),
    Key(
        "failed_login_source_limit",
        "int",
        "Failed logins from one address, for any accounts, before that address may not log in.",
        30,
    ),
    Key(
        "failed_login_tarpit",
        "float",
        "Seconds a refused (429) login waits before it is answered, slowing floods.",
        1.0,
    ),
    Key(
        "hash_workers",
        "int",
        "Threads hashing passwords (scrypt), apart from storage I/O; 0: half the CPUs.",
        0,
    ),
    Key(
        "hash_rate",
        "float",
        "Password hashes per second for the whole process (unknown names count too); 0: "
        "unlimited.",
        20.0,
    ),
    Key(
        "hash_max_wait",
        "float",
        "Seconds a login may wait for its hash; past it 503 with Retry-After.",
        2.0,
    ),
    Key(
        "refresh_token_lifetime", "int", "Seconds a refresh token lives; 0 never expires.", 2592000
    ),
    Key(
        "upload_grace",
        "int",
        "Seconds after its expiry a push token may still finish an upload it started.",
        86400,
    ),
    Key("clock_skew", "int", "Seconds of clock difference tolerated on exp/nbf.", 5),
)

_EP = "endpoints[]."
NOTIFICATIONS = (
    Key("poll_interval", "duration", "How often the dispatcher looks for due deliveries.", "1s"),
    Key("retention", "duration", "Events and delivery logs older than this are deleted.", "7d"),
    Key("concurrency", "int", "Deliveries in flight at once per process.", 8),
    Key("events", "table", "Accepted from the reference registry's YAML and ignored.", env=False),
    Key(
        "endpoints",
        "array of tables",
        "Webhook endpoints, one `[[notifications.endpoints]]` each.",
        env=False,
    ),
    Key(_EP + "name", "string", "Required; letters, digits, `.`, `_`, `-`; unique.", env=False),
    Key(_EP + "url", "url", "Required; http:// or https:// URL receiving POSTs.", env=False),
    Key(_EP + "headers", "table", "Extra request headers (values: string or list).", env=False),
    Key(_EP + "timeout", "duration", "Per-attempt timeout.", "5s", env=False),
    Key(
        _EP + "backoff",
        "duration",
        "Delay before the 2nd attempt; doubles each failure.",
        "1s",
        env=False,
    ),
    Key(_EP + "max_backoff", "duration", "Longest delay between attempts.", "1h", env=False),
    Key(_EP + "max_attempts", "int", "Attempts before a delivery is dead-lettered.", 20, env=False),
    Key(_EP + "jitter", "float", "Random factor on delays, 0 to 0.5.", 0.2, env=False),
    Key(
        _EP + "actions",
        "list",
        "Actions delivered (`push`, `delete`, `pull`, `*`).",
        ["push", "delete"],
        env=False,
    ),
    Key(_EP + "repositories", "list", "Glob patterns of repositories (unset: all).", env=False),
    Key(
        _EP + "tags", "list", "Glob patterns of tags; untagged events then do not match.", env=False
    ),
    Key(
        _EP + "ignore_media_types", "list", "Glob patterns of media types not delivered.", env=False
    ),
    Key(
        _EP + "ignoredmediatypes",
        "list",
        "Reference-registry spelling of `ignore_media_types`.",
        env=False,
    ),
    Key(
        _EP + "ignore",
        "table",
        "Reference-registry `ignore.mediatypes` / `ignore.actions`.",
        env=False,
    ),
    Key(
        _EP + "format",
        "string",
        "`envelope` (reference registry) or `cloudevents`.",
        "envelope",
        env=False,
    ),
    Key(
        _EP + "secret",
        "string or list",
        "Signs every delivery (Dockyard-Signature); several rotate.",
        env=False,
    ),
    Key(
        _EP + "secret_env",
        "string",
        "Name of an environment variable holding the secret.",
        env=False,
    ),
    Key(
        _EP + "github_signature",
        "bool",
        "Also send X-Hub-Signature-256 (needs `secret`).",
        False,
        env=False,
    ),
    Key(
        _EP + "disabled",
        "bool",
        "Keep the endpoint configured but deliver nothing.",
        False,
        env=False,
    ),
    Key(_EP + "threshold", "int", "Reference-registry key, accepted and ignored.", env=False),
)

_LOCAL = "providers.local."
LAUNCHER = (
    Key("enabled", "bool", "Run the launcher (push-to-deploy) in this process.", False),
    Key(
        "registry",
        "addr",
        "HOST:PORT engines pull images from (unset: the host in the push event).",
    ),
    Key("registry_auth", "table", "Credentials engines pull with.", env=False),
    Key("registry_auth.username", "string", "Account engines pull with.", env=False),
    Key("registry_auth.password", "string", "Its password (or a robot token).", env=False),
    Key("cluster", "string", "Label value scoping the containers this launcher owns.", "dockyard"),
    Key(
        "api_token",
        "string",
        "Bearer token of /launcher/v1/ (unset: generated into DATA/launcher/api-token).",
    ),
    Key("api_auth", "bool", "Require the token on the launcher API.", True),
    Key(
        "events_secret",
        "string",
        "Bearer secret for POST /launcher/v1/events from other registries.",
    ),
    Key("events_hmac_key", "string", "Or: HMAC-SHA256 key verifying those event bodies."),
    Key(
        "instance_types",
        "table",
        "`[launcher.instance_types.NAME]` with `cpu` (1024 = 1 core) and `memory` (MiB).",
        env=False,
    ),
    Key(
        "instances",
        "array of tables",
        "Static Docker Engines: `name`, `endpoint`, `type`, `attributes`, `network`, "
        "`tls_ca`, `tls_cert`, `tls_key` (mutual TLS for tcp:// endpoints).",
        env=False,
    ),
    Key("providers", "table", "Where new instances come from; only `local` exists.", env=False),
    Key(_LOCAL + "dockerd", "path", "dockerd binary (unset: from PATH).", env=False),
    Key(
        _LOCAL + "run_root",
        "path",
        "Short directory for engines' sockets.",
        "/run/dockyard-launcher",
        env=False,
    ),
    Key(
        _LOCAL + "storage_driver",
        "string",
        "Storage driver of provisioned engines.",
        "vfs",
        env=False,
    ),
    Key(_LOCAL + "max_instances", "int", "Most engines the provider starts.", 8, env=False),
    Key(_LOCAL + "extra_args", "list", "Extra dockerd arguments.", (), env=False),
    Key(
        _LOCAL + "network",
        "string",
        "Network name of provisioned engines.",
        "host:local",
        env=False,
    ),
    Key(
        _LOCAL + "enforce_cgroup",
        "bool",
        "Give each engine its own cgroup capacity.",
        True,
        env=False,
    ),
    Key(
        "warm_pool",
        "table",
        "Idle instances kept ready per instance type (needs a provider).",
        env=False,
    ),
    Key(
        "default_strategy",
        "array of tables",
        "Placement strategy of services that set none.",
        [{"type": "spread", "field": "instanceId"}],
        env=False,
    ),
    Key("port_range", "string", "Host ports handed to tasks, LOW-HIGH.", "20000-29999"),
    Key("poll_interval", "float", "Seconds between checks of a deployment in progress.", 0.5),
    Key("reconcile_interval", "float", "Seconds between full reconciliations.", 10.0),
    Key(
        "health_grace",
        "float",
        "Seconds added to a health check's worst case before failing.",
        30.0,
    ),
    Key(
        "stable_seconds",
        "float",
        "A task without health check is healthy after running this long.",
        2.0,
    ),
    Key(
        "idle_instance_seconds", "float", "Provisioned instances idle this long are removed.", 300.0
    ),
    Key("stop_timeout", "int", "Seconds `docker stop` waits before killing.", 10),
    Key(
        "stop_provisioned_on_close",
        "bool",
        "Stop provisioned engines when the server stops.",
        False,
    ),
    Key("engine_timeout", "float", "Seconds a Docker Engine API call may take.", 120.0),
    Key(
        "instance_grace_seconds",
        "float",
        "An instance unreachable this long is LOST and its tasks are placed elsewhere.",
        30.0,
    ),
    Key("heartbeat_interval", "float", "Seconds between pings of every instance.", 2.0),
    Key("leader_ttl", "float", "Lease of the node that acts on engines (failover time).", 15.0),
    Key("keep_images", "int", "Images kept per service on each instance (running + previous).", 2),
    Key(
        "volume_roots",
        "list",
        "Host directories under which task definitions may bind-mount (absolute paths).",
        (),
        env=False,
    ),
    Key("ingress", "table", "The reverse proxy giving each service a stable address.", env=False),
    Key("ingress.addr", "addr", "HOST:PORT the ingress listens on.", env=False),
    Key(
        "ingress.drain_seconds",
        "float",
        "A retired task keeps serving requests in flight this long.",
        2.0,
        env=False,
    ),
    Key(
        "ingress.upstream_timeout", "float", "Seconds a proxied request may take.", 60.0, env=False
    ),
    Key("backend", "string", "Where tasks run: `engines` (dockyard places them) or `swarm`.",
        "engines"),
    Key("swarm", "table", "The Swarm manager of `backend = \"swarm\"`.", env=False),
    Key("swarm.endpoint", "string", "unix:// socket or tcp://host:2376 of a manager.", env=False),
    Key("swarm.tls_ca", "path", "CA that signed the manager's certificate.", env=False),
    Key("swarm.tls_cert", "path", "Client certificate presented to the manager.", env=False),
    Key("swarm.tls_key", "path", "Its private key.", env=False),
    Key("swarm.network", "string", "Network the service's tasks attach to.", "host", env=False),
)

SCHEMA: dict[str, Section] = {
    s.name: s
    for s in (
        Section(
            "http",
            "registry/config.py",
            "The listener: address, TLS, shutdown.",
            _typed("http", HTTP),
        ),
        Section("storage", "registry/config.py", "Where blobs live.", _typed("storage", STORAGE)),
        Section(
            "registry",
            "registry/config.py",
            "The Distribution API's behaviour.",
            _typed("registry", REGISTRY),
        ),
        Section("gc", "registry/config.py", "Garbage collection.", _typed("gc", GC)),
        Section(
            "metadata",
            "registry/config.py",
            "Where every part keeps its state: embedded SQLite (default) or PostgreSQL.",
            _typed("metadata", METADATA),
        ),
        Section(
            "cluster",
            "registry/config.py",
            "Several nodes on one PostgreSQL database and one S3 store.",
            _typed("cluster", CLUSTER),
        ),
        Section("log", "registry/config.py", "Logs (stderr).", _typed("log", LOG)),
        Section(
            "auth", "auth/config.py", "Token authentication (Docker registry token spec).", AUTH
        ),
        Section(
            "notifications",
            "registry/events/config.py",
            "Webhooks: the durable outbox and its endpoints.",
            NOTIFICATIONS,
        ),
        Section("launcher", "launcher/config.py", "Push-to-deploy.", LAUNCHER),
        Section(
            "quotas",
            "registry/config.py",
            "Storage quota per customer (one set by `dockyard quota` wins).",
            (),
            free_form=Key("CUSTOMER", "size", 'Bytes or a size such as "10GiB", "500MB".'),
        ),
        Section(
            "admin",
            "dockyard/app.py",
            "The /admin/ HTTP routes.",
            (
                Key(
                    "token",
                    "string",
                    "Bearer token of /admin/ (required for it once auth is on).",
                ),
            ),
        ),
    )
}
# A section added to registry/config.py is still known (and checked) before it is documented.
for _name in TYPED_SECTIONS:
    SCHEMA.setdefault(_name, Section(_name, "registry/config.py", "", _typed(_name, {})))

TOP_LEVEL = (Key("data_dir", "path", "Data directory (also `--data`, `DOCKYARD_DATA`).", "data"),)


def _coerce(key: Key, value: str, where: str) -> Any:
    if key.type == "bool":
        if value.strip().lower() in TRUE:
            return True
        if value.strip().lower() in FALSE:
            return False
        raise ConfigError(f"{where}: {value!r} is not true or false")
    if key.type in ("int", "float"):
        try:
            return int(value) if key.type == "int" else float(value)
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not a number") from None
    if key.type.startswith("list"):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def apply_env(config: Config, environ: Mapping[str, str] | None = None) -> None:
    """Apply DOCKYARD_<SECTION>_<KEY> to the raw sections (the typed ones are done by
    registry/config.py). Values are typed by the schema: "false" must not become truthy."""
    environ = os.environ if environ is None else environ
    for section in SCHEMA.values():
        if section.name in TYPED_SECTIONS:
            continue
        prefix = f"DOCKYARD_{section.name.upper()}_"
        table = dict(config.section(section.name))
        changed = False
        for name, value in environ.items():
            if not name.startswith(prefix):
                continue
            key_name = name[len(prefix) :].lower()
            key = section.key(key_name)
            if key is None and section.free_form is not None:
                key = Key(key_name, section.free_form.type, section.free_form.doc)
            if key is None or key.env_name(section.name) is None:
                continue  # not a configuration variable (e.g. DOCKYARD_LAUNCHER_URL of the CLI)
            table[key_name] = _coerce(key, value, name)
            changed = True
        if changed:
            config.raw[section.name] = table


# --- the reference, rendered -------------------------------------------------------------------


def _show_default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, tuple | list) and not value:
        return "`[]`"
    if isinstance(value, list | tuple):
        return "`" + repr(list(value)).replace("'", '"') + "`"
    return f"`{value}`"


INTRO = """\
# Configuration reference

dockyard reads one TOML file (`dockyard serve --config FILE`) and environment variables.
Every default works on one machine with no other service, so an empty file is a working
configuration. Working examples for each feature are in [`examples/`](../examples/).

- **Environment overrides**: `DOCKYARD_<SECTION>_<KEY>` sets a scalar key, e.g.
  `DOCKYARD_HTTP_ADDR=0.0.0.0:5000`, `DOCKYARD_AUTH_ENABLED=true`,
  `DOCKYARD_ADMIN_TOKEN=…`, `DOCKYARD_QUOTAS_ACME=10GiB`. An override wins over the file.
  Booleans accept `true/false/1/0/yes/no/on/off`; lists are comma-separated. Tables and arrays
  of tables (`[[notifications.endpoints]]`, `[launcher.instance_types.*]`) are file-only.
  `DOCKYARD_DATA` sets the data directory.
- **Checking a file**: `dockyard check-config FILE` loads every section through the parser
  of the part that owns it, reports unknown keys (with the closest known key) and invalid
  values, and exits non-zero if anything is wrong.
- Durations (`duration`) are seconds or Go-style strings (`"500ms"`, `"1m30s"`, `"7d"`); sizes
  (`size`) are bytes or strings such as `"500MiB"`, `"10GB"`.

This file is generated from `dockyard/ops/schema.py`
(`python -m dockyard.ops.schema > docs/configuration.md`); a test keeps both in step with the
code.
"""

OPERATIONS = (
    ("Liveness", "`GET /healthz`", "200 while the process answers."),
    (
        "Readiness",
        "`GET /readyz`",
        "200 when storage, metadata and the event outbox answer; 503 with "
        '`{"status": "unavailable", "reason": …, "checks": {…}}` otherwise and while '
        "shutting down.",
    ),
    (
        "Metrics",
        "`GET /metrics`",
        "Prometheus text format; on `[http] metrics_addr` instead when that is set.",
    ),
    (
        "Read-only",
        '`GET`/`PUT /admin/read-only` `{"read_only": true}`',
        "Needs the admin token when auth is on or a token is set.",
    ),
    (
        "SIGTERM",
        "",
        "Stop accepting, finish requests and uploads in flight (up to "
        "`http.shutdown_timeout`), flush the event outbox, exit 0.",
    ),
    ("SIGUSR1", "", "Toggle read-only mode."),
)
OPERATIONS_NOTES = """\
None of `/healthz`, `/readyz`, `/metrics` needs credentials: put `metrics_addr` on a private
address if request rates are sensitive.

Read-only mode answers every POST, PUT, PATCH and DELETE under `/v2/` with
`405 {"errors": [{"code": "UNSUPPORTED", "message": "the registry is in read-only maintenance
mode: …"}]}`, as the reference registry's `maintenance.readonly` does.
"""


def render_metrics() -> str:
    from prometheus_client.metrics import MetricWrapperBase

    from registry import metrics

    rows = ["## Metrics\n", "| Name | Type | Labels | Description |", "|---|---|---|---|"]
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name + ("_total" if value._type == "counter" else "")
            labels = ", ".join(f"`{label}`" for label in value._labelnames) or "—"
            rows.append(f"| `{name}` | {value._type} | {labels} | {value._documentation} |")
    rows.append(
        "\nPlus the standard `process_*` metrics (CPU seconds, resident memory, open file "
        "descriptors, start time) of the serving process.\n"
    )
    return "\n".join(rows)


LOG_FIELDS = (
    ("time, level, logger, msg", "every record", "UTC time with milliseconds, level, source."),
    ("request_id", "access, events", "Also returned as `X-Request-Id` (a client's own is kept)."),
    ("method, path, status", "access", "Query strings are not logged (they may carry tokens)."),
    ("bytes_in", "access", "Request body bytes received (absent when none)."),
    ("bytes_out", "access", "Response bytes written, headers included."),
    ("duration_ms", "access", "Until the last byte of the response was written."),
    ("remote, user_agent", "access", "Peer address and `User-Agent`."),
    ("repository, customer", "access, events", "For requests naming a repository."),
    ("user", "access, events", "The authenticated subject, when auth is on."),
    (
        "event",
        "events",
        "`listening`, `readiness`, `read_only`, `manifest_push`, `manifest_delete`, `gc`, "
        "`shutdown`, `shutdown_timeout`, `stopped`.",
    ),
)


def render_logs() -> str:
    rows = [
        "## Logs\n",
        'Written to stderr: with `format = "json"` one JSON object per line, with `text` one '
        "readable line (extra fields as `key=value`). Access records come from the "
        "`dockyard.access` logger, one per request.\n",
        "| Field | In | Meaning |",
        "|---|---|---|",
    ]
    rows += [f"| `{name}` | {where} | {meaning} |" for name, where, meaning in LOG_FIELDS]
    return "\n".join(rows) + "\n"


def render_markdown() -> str:
    out = [INTRO]
    out.append("## Top level\n")
    out.append("| Key | Type | Default | Environment | Description |\n|---|---|---|---|---|")
    for key in TOP_LEVEL:
        out.append(
            f"| `{key.name}` | {key.type} | {_show_default(key.default)} | "
            f"`DOCKYARD_DATA` | {key.doc} |"
        )
    out.append("")
    for section in SCHEMA.values():
        out.append(f"## `[{section.name}]`\n")
        out.append(f"{section.doc} Parsed by `{section.owner}`.\n")
        out.append("| Key | Type | Default | Environment | Description |\n|---|---|---|---|---|")
        keys = list(section.keys) + ([section.free_form] if section.free_form else [])
        for key in keys:
            env = key.env_name(section.name)
            out.append(
                f"| `{key.name}` | {key.type} | {_show_default(key.default)} | "
                f"{f'`{env}`' if env else '—'} | {key.doc} |"
            )
        out.append("")
    out.append(render_metrics())
    out.append(render_logs())
    out.append("## Operations endpoints and signals\n")
    out.append("| What | Where | Notes |\n|---|---|---|")
    out.extend(f"| {what} | {where} | {notes} |" for what, where, notes in OPERATIONS)
    out.append("")
    out.append(OPERATIONS_NOTES)
    return "\n".join(out)


if __name__ == "__main__":
    print(render_markdown(), end="")
