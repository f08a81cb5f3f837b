"""SHA-256 and SHA-512 whose running state can be saved and resumed: an upload started on one
node continues on another (or after a restart) without re-reading the bytes already stored.

Python's hashlib cannot export its state, and PyPI's `rehash` refuses OpenSSL 3, so this calls
the libcrypto that hashlib itself uses through ctypes, on its public `SHA256_CTX`/`SHA512_CTX`
structures (openssl/sha.h; plain structs whose bytes are the whole state). The saved state is
only ever read back from dockyard's own database, is checked for its exact length, and is never
unpickled. Where libcrypto lacks these functions, `available()` is False and callers fall back
to re-hashing the stored bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
from typing import Any

# sizeof(SHA256_CTX) = 8*4 + 4 + 4 + 16*4 + 4 + 4; sizeof(SHA512_CTX) = 8*8 + 8 + 8 + 128 + 4 + 4
_CTX_SIZE = {"sha256": 112, "sha512": 216}
_DIGEST_SIZE = {"sha256": 32, "sha512": 64}
_PREFIX = {"sha256": "SHA256", "sha512": "SHA512"}


@functools.cache
def _lib() -> Any | None:
    name = ctypes.util.find_library("crypto")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    for prefix in _PREFIX.values():
        for suffix in ("_Init", "_Update", "_Final"):
            if not hasattr(lib, prefix + suffix):
                return None
    for prefix in _PREFIX.values():
        update = getattr(lib, prefix + "_Update")
        update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        getattr(lib, prefix + "_Init").argtypes = [ctypes.c_void_p]
        getattr(lib, prefix + "_Final").argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    return lib


@functools.cache
def available() -> bool:
    """True when resumable hashing works here (checked once against hashlib)."""
    if _lib() is None:
        return False
    try:
        for algorithm in _CTX_SIZE:
            h = ResumableHash(algorithm)
            h.update(b"dockyard")
            resumed = ResumableHash(algorithm, h.state())
            resumed.update(b"!")
            if resumed.hexdigest() != hashlib.new(algorithm, b"dockyard!").hexdigest():
                return False
    except (OSError, ValueError):
        return False
    return True


class ResumableHash:
    """hashlib-like (`update`, `hexdigest`, `copy`) plus `state()` to save and resume."""

    def __init__(self, algorithm: str, state: bytes | None = None) -> None:
        if algorithm not in _CTX_SIZE:
            raise ValueError(f"unsupported algorithm {algorithm!r}")
        lib = _lib()
        if lib is None:
            raise OSError("libcrypto with SHA256_Init/SHA512_Init is not available")
        self.algorithm = algorithm
        self._lib = lib
        self._prefix = _PREFIX[algorithm]
        size = _CTX_SIZE[algorithm]
        if state is None:
            self._ctx = ctypes.create_string_buffer(size)
            getattr(lib, self._prefix + "_Init")(self._ctx)
        else:
            if len(state) != size:
                raise ValueError(f"a saved {algorithm} state has {size} bytes, not {len(state)}")
            self._ctx = ctypes.create_string_buffer(bytes(state), size)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        buf = bytes(data) if not isinstance(data, bytes) else data
        getattr(self._lib, self._prefix + "_Update")(self._ctx, buf, len(buf))

    def state(self) -> bytes:
        return self._ctx.raw

    def copy(self) -> ResumableHash:
        return ResumableHash(self.algorithm, self.state())

    def digest(self) -> bytes:
        ctx = ctypes.create_string_buffer(self._ctx.raw, len(self._ctx))
        out = ctypes.create_string_buffer(_DIGEST_SIZE[self.algorithm])
        getattr(self._lib, self._prefix + "_Final")(out, ctx)
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()
