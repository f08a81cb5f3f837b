"""The secret store: values that task definitions name under `secrets`, encrypted at rest.

Each value is sealed with Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`) under a key
kept in DATA/launcher/secrets.key (mode 0600, made on first use). The database — possibly a
PostgreSQL server other people administer — only ever holds ciphertext. Values are decrypted
only to hand them to a container's environment; the API lists names and never answers a value.
In a cluster every node needs the same key file (copy it, or point `secrets_key_file` at a
shared path).
"""

from __future__ import annotations

import os
import pathlib
import re

from cryptography.fernet import Fernet, InvalidToken

from launcher.errors import InvalidRequest, LauncherError
from launcher.store import Store

SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_SECRET_BYTES = 64 * 1024


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not SECRET_NAME_RE.match(name):
        raise InvalidRequest(f"secret name must match {SECRET_NAME_RE.pattern}")
    return name


class SecretStore:
    def __init__(self, store: Store, key_path: pathlib.Path) -> None:
        self.store = store
        self.key_path = key_path
        self._fernet: Fernet | None = None

    def _cipher(self) -> Fernet:
        if self._fernet is None:
            self._fernet = Fernet(_load_or_create_key(self.key_path))
        return self._fernet

    async def put(self, name: str, value: str) -> bool:
        validate_name(name)
        data = value.encode()
        if len(data) > MAX_SECRET_BYTES:
            raise InvalidRequest(f"a secret holds at most {MAX_SECRET_BYTES} bytes")
        token = self._cipher().encrypt(data).decode()
        return await self.store.put_secret(name, token)

    async def reveal(self, name: str) -> str:
        """The plaintext, for a container's environment only."""
        token = await self.store.get_secret(name)
        try:
            return self._cipher().decrypt(token.encode()).decode()
        except InvalidToken:
            raise LauncherError(
                f"secret {name} cannot be decrypted with {self.key_path} (another node's key?)"
            ) from None

    async def delete(self, name: str) -> None:
        await self.store.delete_secret(validate_name(name))


def _load_or_create_key(path: pathlib.Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
    return key
