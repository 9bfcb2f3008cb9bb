"""The artifact store: one verified safetensors file per stage output, under `.artifacts/`.

Layout::

    objects/<id>.safetensors   tensors + one JSON metadata string (key "ltstg")
    refs/<name>                a name given with --name: holds an id
    checkpoints/<id>.pt        resumable state of a stage that has not committed yet

An id is the sha256 of what defines the result (kind, settings, parents), so a repeated command
finds its artifact. A digest of the file's content is stored inside it and checked on every load.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ltstg.errors import LtstgError
from ltstg.recipe import canonical_json

FORMAT_VERSION = 1
METADATA_KEY = "ltstg"
SHORT = 12
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MAX_HEADER = 100 * 1024 * 1024


def artifact_id(kind: str, settings: dict[str, Any], parents: list[str]) -> str:
    """Hash of what defines a result; run options (device, paths, workers) are not part of it."""
    defining = {"format": FORMAT_VERSION, "kind": kind, "settings": settings, "parents": parents}
    return hashlib.sha256(canonical_json(defining).encode()).hexdigest()


@dataclass(frozen=True)
class ArtifactInfo:
    """What the header says, without reading or verifying the tensors."""

    id: str
    path: Path
    size: int
    meta: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "?")

    @property
    def created(self) -> str:
        return self.meta.get("created", "")

    @property
    def parents(self) -> list[str]:
        return list(self.meta.get("parents", []))

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.meta.get("metrics", {}))


@dataclass(frozen=True)
class Artifact:
    """A verified artifact: its metadata and its tensors (on the CPU)."""

    id: str
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def settings(self) -> dict[str, Any]:
        return self.meta.get("settings", {})

    @property
    def info(self) -> dict[str, Any]:
        return self.meta.get("info", {})

    @property
    def metrics(self) -> dict[str, float]:
        return self.meta.get("metrics", {})

    @property
    def parents(self) -> list[str]:
        return list(self.meta.get("parents", []))

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise LtstgError(
                f"artifact {self.id[:SHORT]} ({self.kind}) has no tensor {name!r}; it may come from another ltstg version."
            ) from None


def _split_file(data: bytes, label: str) -> tuple[dict[str, Any], memoryview]:
    """Parse a safetensors file into (header, data section); malformed files are a clear error."""
    if len(data) < 8:
        raise LtstgError(f"artifact {label} is corrupt: the file is truncated; delete it or rerun with --force.")
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(len(data) - 8, _MAX_HEADER):
        raise LtstgError(f"artifact {label} is corrupt: bad header length; delete it or rerun with --force.")
    try:
        header = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LtstgError(f"artifact {label} is corrupt: unreadable header; delete it or rerun with --force.") from None
    if not isinstance(header, dict):
        raise LtstgError(f"artifact {label} is corrupt: unreadable header; delete it or rerun with --force.")
    return header, memoryview(data)[8 + length :]


def _metadata(header: dict[str, Any], label: str) -> dict[str, Any]:
    try:
        meta = json.loads(header["__metadata__"][METADATA_KEY])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise LtstgError(f"artifact {label} is not an ltstg artifact or its metadata is corrupt.") from None
    if not isinstance(meta, dict):
        raise LtstgError(f"artifact {label} has corrupt metadata.")
    return meta


def _digest(header: dict[str, Any], meta: dict[str, Any], body: memoryview) -> str:
    """sha256 over the tensor index, the metadata (minus the digest itself) and the raw bytes."""
    index = {k: v for k, v in header.items() if k != "__metadata__"}
    hasher = hashlib.sha256()
    hasher.update(canonical_json(index).encode())
    hasher.update(canonical_json({k: v for k, v in meta.items() if k != "digest"}).encode())
    hasher.update(body)
    return hasher.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, chunks: list[bytes | memoryview]) -> None:
    """Write to a temporary file, fsync, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        with open(tmp, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


class Store:
    """`.artifacts/`: put, get, resolve, verify, lineage, names, locks and checkpoints."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- paths ---------------------------------------------------------------------------------
    @property
    def objects(self) -> Path:
        return self.root / "objects"

    def path(self, artifact_id: str) -> Path:
        return self.objects / f"{artifact_id}.safetensors"

    def exists(self, artifact_id: str) -> bool:
        return self.path(artifact_id).is_file()

    # -- write ---------------------------------------------------------------------------------
    def put(self, artifact_id: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
        """Write one artifact atomically; the digest covers tensors and metadata."""
        clean = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()}
        meta = {**meta, "id": artifact_id, "format": FORMAT_VERSION}
        meta.pop("digest", None)
        draft = save_tensors(clean, metadata={METADATA_KEY: canonical_json(meta)})
        header, body = _split_file(draft, artifact_id[:SHORT])
        meta["digest"] = _digest(header, meta, body)
        header["__metadata__"] = {METADATA_KEY: canonical_json(meta)}
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        path = self.path(artifact_id)
        atomic_write(path, [struct.pack("<Q", len(encoded)), encoded, body])
        return path

    # -- read ----------------------------------------------------------------------------------
    def info(self, artifact_id: str) -> ArtifactInfo:
        """Header-only view (fast): for listings and lineage, not for use in computation."""
        path = self.path(artifact_id)
        try:
            with open(path, "rb") as handle:
                first = handle.read(8)
                length = struct.unpack("<Q", first)[0] if len(first) == 8 else -1
                rest = handle.read(length) if 0 <= length <= _MAX_HEADER else b""
            size = path.stat().st_size
        except FileNotFoundError:
            raise LtstgError(f"artifact {artifact_id[:SHORT]} is not in {self.root}.") from None
        try:
            header, _ = _split_file(first + rest, artifact_id[:SHORT])
            return ArtifactInfo(artifact_id, path, size, _metadata(header, artifact_id[:SHORT]))
        except LtstgError as error:
            return ArtifactInfo(artifact_id, path, size, {}, str(error))

    def get(self, artifact_id: str, kind: str | None = None) -> Artifact:
        """Load and verify an artifact; any mismatch is an error naming it, never silent use."""
        label = artifact_id[:SHORT]
        try:
            data = self.path(artifact_id).read_bytes()
        except FileNotFoundError:
            raise LtstgError(f"artifact {label} is not in {self.root}.") from None
        header, body = _split_file(data, label)
        meta = _metadata(header, label)
        if meta.get("digest") != _digest(header, meta, body) or meta.get("id") != artifact_id:
            raise LtstgError(
                f"artifact {label} is corrupt: its content digest does not match; delete it or rerun with --force."
            )
        if kind is not None and meta.get("kind") != kind:
            raise LtstgError(f"artifact {label} is a {meta.get('kind')} artifact, not a {kind}.")
        try:
            tensors = load_tensors(bytes(data))
        except Exception as error:  # safetensors raises its own error types for malformed data
            raise LtstgError(f"artifact {label} is corrupt: {error}") from None
        return Artifact(artifact_id, meta, tensors)

    def ids(self) -> list[str]:
        if not self.objects.is_dir():
            return []
        return sorted(p.name[: -len(".safetensors")] for p in self.objects.glob("[0-9a-f]*.safetensors"))

    def list(self, kind: str | None = None) -> list[ArtifactInfo]:
        """Every artifact (oldest first), read from headers only."""
        infos = [self.info(i) for i in self.ids()]
        if kind is not None:
            infos = [i for i in infos if i.kind == kind]
        return sorted(infos, key=lambda i: (i.created, i.id))

    def verify(self) -> list[tuple[ArtifactInfo, str | None]]:
        """Re-check every digest: (info, problem or None)."""
        results = []
        for info in self.list():
            try:
                self.get(info.id)
                results.append((info, None))
            except LtstgError as error:
                results.append((info, str(error)))
        return results

    # -- names and resolution ------------------------------------------------------------------
    def set_name(self, name: str, artifact_id: str) -> None:
        if not _NAME.match(name):
            raise LtstgError(f"invalid name {name!r}: use letters, digits, '.', '_' and '-'.")
        atomic_write(self.root / "refs" / name, [artifact_id.encode()])

    def names(self) -> dict[str, list[str]]:
        """id -> names that point at it."""
        out: dict[str, list[str]] = {}
        refs = self.root / "refs"
        if refs.is_dir():
            for ref in sorted(refs.iterdir()):
                if not ref.name.startswith("."):
                    out.setdefault(ref.read_text().strip(), []).append(ref.name)
        return out

    def resolve(self, ref: str | None, kind: str) -> str:
        """An id from a name, a unique id prefix, or (ref None) the newest artifact of `kind`."""
        if ref is None:
            candidates = [i for i in self.list(kind) if i.problem is None]
            if not candidates:
                raise LtstgError(f"no {kind} artifact in {self.root}; create one first (see `ltstg --help`).")
            return candidates[-1].id
        named = self.root / "refs" / ref
        if _NAME.match(ref) and named.is_file():
            artifact_id = named.read_text().strip()
            if not self.exists(artifact_id):
                raise LtstgError(f"name {ref!r} points at {artifact_id[:SHORT]}, which is no longer in {self.root}.")
            found = self.info(artifact_id)
            if found.kind != kind:
                raise LtstgError(f"{ref!r} is a {found.kind} artifact, not a {kind}.")
            return artifact_id
        matches = [i for i in self.ids() if i.startswith(ref.lower())]
        if not matches:
            known = self.list(kind)[-5:]
            listing = ", ".join(i.id[:SHORT] for i in known) or "none"
            raise LtstgError(f"no artifact or name {ref!r} in {self.root}; {kind} artifacts: {listing}.")
        of_kind = [i for i in matches if self.info(i).kind == kind]
        if not of_kind:
            raise LtstgError(f"{ref!r} is a {self.info(matches[0]).kind} artifact, not a {kind}.")
        if len(of_kind) > 1:
            listing = ", ".join(i[:SHORT] for i in of_kind[:8])
            raise LtstgError(f"id prefix {ref!r} is ambiguous: {listing}; give more characters.")
        return of_kind[0]

    def lineage(self, artifact_id: str) -> dict[str, Any]:
        """Tree of ancestors: {"info": ArtifactInfo, "parents": [subtrees]}."""
        info = self.info(artifact_id) if self.exists(artifact_id) else ArtifactInfo(
            artifact_id, self.path(artifact_id), 0, {}, "missing"
        )
        return {"info": info, "parents": [self.lineage(p) for p in info.parents]}

    # -- concurrency and resumption ------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, artifact_id: str, on_wait: Any = None) -> Iterator[None]:
        """Exclusive per-id lock, so two runs of the same stage never compute one artifact twice."""
        # the lock lives beside, not inside, the store: input that fails a stage leaves no trace there
        where = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / "ltstg-locks" / f"{where}-{artifact_id}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def checkpoint_path(self, artifact_id: str) -> Path:
        return self.root / "checkpoints" / f"{artifact_id}.pt"

    def save_checkpoint(self, artifact_id: str, state: dict[str, Any]) -> None:
        """Resumable state (tensors, numbers, strings, dicts of them): loadable with weights_only."""
        path = self.checkpoint_path(artifact_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        try:
            torch.save(state, tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, artifact_id: str) -> dict[str, Any] | None:
        path = self.checkpoint_path(artifact_id)
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for a damaged pickle
            raise LtstgError(f"checkpoint {path} is unreadable ({error}); delete it or rerun with --force.") from None

    def clear_checkpoint(self, artifact_id: str) -> None:
        self.checkpoint_path(artifact_id).unlink(missing_ok=True)
