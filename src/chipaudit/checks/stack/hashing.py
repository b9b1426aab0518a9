"""SHA-256 of many files, fast: large reads, several threads (hashlib releases the GIL while it
hashes a large buffer), and each file hashed once per process however many roles it plays."""

from __future__ import annotations

import errno
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

CHUNK_BYTES = 1 << 20
# More threads than this only queue on the disk; fewer leave SHA-NI cores idle on big libraries.
MAX_THREADS = 8
BATCHES_PER_THREAD = 4


@dataclass(frozen=True)
class Digest:
    sha256: str | None
    size: int | None
    reason: str | None = None  # why there is no digest: the file could not be read


def _file_digest(f: BinaryIO) -> hashlib._Hash:
    if hasattr(hashlib, "file_digest"):  # Python >= 3.11: reads straight into the hash, no copies
        return hashlib.file_digest(f, "sha256")
    h = hashlib.sha256()
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    while n := f.readinto(buffer):
        h.update(view[:n])
    return h


def unreadable_reason(e: OSError) -> str:
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.ENOENT:
        return "no such file"
    return e.strerror or type(e).__name__


def sha256_file(path: str) -> Digest:
    try:
        with open(path, "rb") as f:
            digest = _file_digest(f)
            return Digest(digest.hexdigest(), f.tell())
    except OSError as e:
        return Digest(None, None, unreadable_reason(e))


class Hasher:
    def __init__(self, threads: int | None = None):
        self.threads = threads or min(MAX_THREADS, os.cpu_count() or 1)
        self._cache: dict[str, Digest] = {}

    def many(self, paths: list[str]) -> dict[str, Digest]:
        todo = sorted({p for p in paths if p not in self._cache}, key=lambda p: -_size(p))
        # Dealt round-robin, biggest first, into a few batches per thread: the threads stay evenly loaded,
        # and a package of ten thousand small files costs a few hundred hand-offs, not ten thousand.
        batches = [todo[i::self.threads * BATCHES_PER_THREAD] for i in range(self.threads * BATCHES_PER_THREAD)]
        with ThreadPoolExecutor(self.threads) as pool:
            for batch, digests in zip(batches, pool.map(_hash_batch, batches), strict=True):
                self._cache.update(zip(batch, digests, strict=True))
        return {p: self._cache[p] for p in paths}

    def one(self, path: str) -> Digest:
        return self.many([path])[path]


def _hash_batch(paths: list[str]) -> list[Digest]:
    return [sha256_file(p) for p in paths]


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
