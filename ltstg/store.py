"""The artifact store: one verified safetensors file per stage output, under `.artifacts/`.

Layout::

    objects/<id>.safetensors   tensors + one JSON metadata string (key "ltstg")
    refs/<name>                a name given with --name: holds an id
    checkpoints/<id>.pt        resumable state of a stage that has not committed yet, with its own digest
    locks/<id>.lock            held while a stage computes <id>; removed when it is done

An id is the sha256 of what defines the result (kind, settings, parents), so a repeated command
finds its artifact. A digest of the file's content is stored inside it and checked on every load.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import resource
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ltstg.errors import LtstgError

FORMAT_VERSION = 1
METADATA_KEY = "ltstg"
SHORT = 12
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MAX_HEADER = 100 * 1024 * 1024
_TEMP_PREFIX = ".tmp-"  # atomic_write's temporary files: .tmp-<host>-<pid>-<final name>
_CHECKPOINT_MAGIC = b"ltstg-checkpoint sha256 "  # followed by 64 hex digits and a newline, then torch.save bytes


class DamagedCheckpoint(LtstgError):
    """A checkpoint that fails its digest or does not load: the stage starts over instead of resuming from it."""


def canonical_json(value: Any) -> str:
    """The one serialisation that ids are hashed from: sorted keys, no whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def os_error(action: str, path: Path | str, error: OSError) -> LtstgError:
    """One line naming the path and the OS's reason, for every file operation a user's setup can break."""
    reason = error.strerror or str(error)
    return LtstgError(f"cannot {action} {path} ({reason}); check the path, its permissions and free space.")


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
class Output:
    """What a stage returns; the runner adds id, parents and settings."""

    kind: str
    tensors: dict[str, torch.Tensor]
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    key_metric: str | None = None
    notes: list[str] = field(default_factory=list)  # every deviation from what was asked, one line each


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


def _temp_path(path: Path) -> Path:
    """Host and pid in the name, so a later write can tell a dead process's leftover from a live one's."""
    return path.with_name(f"{_TEMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{path.name}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def stale_temp_files(folder: Path) -> list[Path]:
    """Temporary files left by processes of this host that no longer run (a kill -9 mid-write)."""
    if not folder.is_dir():
        return []
    ours = f"{_TEMP_PREFIX}{socket.gethostname()}-"
    stale = []
    for entry in folder.iterdir():
        pid = entry.name[len(ours) :].split("-", 1)[0] if entry.name.startswith(ours) else ""
        if pid.isdigit() and not _alive(int(pid)):
            stale.append(entry)
    return sorted(stale)


def file_size_limit() -> int | None:
    """The largest file this process may write (`ulimit -f`), or None when there is no limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def atomic_write(path: Path, chunks: list[bytes | memoryview]) -> None:
    """Write to a temporary file, fsync, then rename: readers never see half a file.

    Leftovers of dead writers in the same folder are removed first; any OS failure (read-only store,
    full disk, `ulimit -f`) is one LtstgError naming the path, and the temporary file is gone.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for leftover in stale_temp_files(path.parent):
            leftover.unlink(missing_ok=True)
    except OSError as error:
        raise os_error("write to", path.parent, error) from None
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as error:
        raise os_error("write", path, error) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


class Store:
    """`.artifacts/`: put, get, resolve, verify, lineage, names, locks and checkpoints."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- paths ---------------------------------------------------------------------------------
    @property
    def objects(self) -> Path:
        return self.root / "objects"

    @property
    def refs(self) -> Path:
        """One file per name given with --name, holding the id it points at."""
        return self.root / "refs"

    def path(self, artifact_id: str) -> Path:
        return self.objects / f"{artifact_id}.safetensors"

    def exists(self, artifact_id: str) -> bool:
        return self.path(artifact_id).is_file()

    def check_writable(self) -> None:
        """Fail before any work when the store can't take a result: a file in its place, no permission, no space.

        It may leave empty folders, never a file.
        """
        if self.root.exists() and not self.root.is_dir():
            raise LtstgError(f"store path {self.root} is a file, not a folder; pass --store with a folder.")
        for folder in (self.objects, self.root / "locks", self.refs):
            probe = _temp_path(folder / "probe")
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with open(probe, "wb") as handle:
                    handle.write(b"ltstg")
            except OSError as error:
                raise os_error("write to", folder, error) from None
            finally:
                with contextlib.suppress(OSError):
                    probe.unlink(missing_ok=True)

    def require(self) -> None:
        """Commands that only read the store fail clearly when there is none."""
        if not self.root.is_dir():
            raise LtstgError(f"no store at {self.root}; pass --store (or LTSTG_STORE) with an existing store folder.")

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
        except OSError as error:  # a folder named like an artifact, a file without read permission
            return ArtifactInfo(artifact_id, path, 0, {}, str(os_error("read", path, error)))
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
        except OSError as error:
            raise os_error("read", self.path(artifact_id), error) from None
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
    @staticmethod
    def check_name(name: str) -> None:
        if not _NAME.match(name):
            raise LtstgError(f"invalid name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit.")

    def named(self, name: str) -> str | None:
        """The id a name points at, or None."""
        ref = self.refs / name
        return ref.read_text().strip() if _NAME.match(name) and ref.is_file() else None

    def set_name(self, name: str, artifact_id: str) -> str | None:
        """Point `name` at `artifact_id`; returns the id it pointed at before, if another."""
        self.check_name(name)
        previous = self.named(name)
        atomic_write(self.refs / name, [artifact_id.encode()])
        return previous if previous != artifact_id else None

    def names(self) -> dict[str, list[str]]:
        """id -> names that point at it; entries of refs/ that are not name files are skipped (see odd_refs)."""
        out: dict[str, list[str]] = {}
        if self.refs.is_dir():
            for ref in sorted(self.refs.iterdir()):
                if not ref.name.startswith(".") and ref.is_file():
                    out.setdefault(ref.read_text().strip(), []).append(ref.name)
        return out

    def odd_refs(self) -> list[Path]:
        """Entries of refs/ that are not name files (a folder someone made there)."""
        if not self.refs.is_dir():
            return []
        return sorted(ref for ref in self.refs.iterdir() if not ref.name.startswith(".") and not ref.is_file())

    def resolve(
        self, ref: str | None, kind: str | None = None, *, parent: str | None = None, sound: bool = True
    ) -> str:
        """The one way every command, report and API call picks an artifact: an id from a name or a unique id
        prefix (of `kind`, or of any kind when None), or without `ref` the newest artifact of `kind`, or the
        newest of `kind` made from `parent` (its first parent). `sound=False` also gives damaged or deleted
        artifacts' ids, for the commands that diagnose them (lineage)."""
        if ref is None:
            return self._newest(kind, parent)
        if _NAME.match(ref) and (self.refs / ref).is_file():
            return self._named(ref, kind) if sound else (self.refs / ref).read_text().strip()
        matches = [i for i in self.ids() if i.startswith(ref.lower())]
        if not matches:
            known = self.list(kind)[-5:] if kind is not None else []
            listing = f"; {kind} artifacts: {', '.join(i.id[:SHORT] for i in known) or 'none'}" if kind else \
                "; see `ltstg inspect artifacts`"
            raise LtstgError(f"no artifact or name {ref!r} in {self.root}{listing}.")
        infos = [self.info(i) for i in matches]
        damaged = [i for i in infos if i.problem is not None]
        if not sound and len(matches) == 1:
            return matches[0]
        if damaged:  # even beside a sound match: the damaged one may be the artifact meant
            raise LtstgError(damaged[0].problem)
        of_kind = [i.id for i in infos if kind is None or i.kind == kind]
        if not of_kind:
            raise LtstgError(f"{ref!r} is a {infos[0].kind} artifact, not a {kind}.")
        if len(of_kind) > 1:
            listing = ", ".join(i[:SHORT] for i in of_kind[:8])
            raise LtstgError(f"id prefix {ref!r} is ambiguous: {listing}; give more characters.")
        return of_kind[0]

    def find(self, ref: str | None, kind: str, *, parent: str | None = None) -> Artifact:
        """`resolve`, then the verified artifact."""
        return self.get(self.resolve(ref, kind, parent=parent), kind)

    def children(self, parent: str, kind: str) -> list[ArtifactInfo]:
        """Sound artifacts of `kind` made from `parent` (their first parent), oldest first."""
        return [i for i in self.list(kind) if i.problem is None and i.parents[:1] == [parent]]

    def _newest(self, kind: str | None, parent: str | None) -> str:
        if kind is None:
            raise LtstgError("name the artifact (an id prefix or a name); see `ltstg inspect artifacts`.")
        infos = self.list()
        # a file whose header is damaged has no readable kind or date: it may be the newest of this
        # kind, so never fall back to an older one without a word
        damaged = [i for i in infos if i.problem is not None]
        if damaged:
            raise LtstgError(
                f"{damaged[0].problem.rstrip('.')} — it may be the newest {kind}, so none is picked; "
                "delete it or name the artifact to use."
            )
        candidates = [i for i in infos if i.kind == kind and (parent is None or i.parents[:1] == [parent])]
        # BatchNorm-shifted features serve the rows that ask for them (retrain.bn_shift), never by default
        candidates = [i for i in candidates if "bn_shift_batch" not in i.meta.get("settings", {})] or candidates
        if not candidates and parent is not None:
            raise LtstgError(f"no {kind} artifact made from {parent[:SHORT]} in {self.root}; create one first or name one.")
        if not candidates:
            raise LtstgError(f"no {kind} artifact in {self.root}; create one first (see `ltstg --help`).")
        return candidates[-1].id

    def _named(self, name: str, kind: str | None) -> str:
        artifact_id = (self.refs / name).read_text().strip()
        if not self.exists(artifact_id):
            raise LtstgError(f"name {name!r} points at {artifact_id[:SHORT]}, which is no longer in {self.root}.")
        found = self.info(artifact_id)
        if found.problem is not None:
            raise LtstgError(found.problem)
        if kind is not None and found.kind != kind:
            raise LtstgError(f"{name!r} is a {found.kind} artifact, not a {kind}.")
        return artifact_id

    def lineage(self, artifact_id: str) -> dict[str, Any]:
        """Tree of ancestors: {"info": ArtifactInfo, "parents": [subtrees]}."""
        info = self.info(artifact_id) if self.exists(artifact_id) else ArtifactInfo(
            artifact_id, self.path(artifact_id), 0, {}, "missing"
        )
        return {"info": info, "parents": [self.lineage(p) for p in info.parents]}

    # -- concurrency and resumption ------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, artifact_id: str, on_wait: Any = None) -> Iterator[None]:
        """Exclusive per-id lock, so two runs of the same stage never compute one artifact twice.

        The lock file lives in the store, so every user and host that shares the store shares it (Linux
        NFS clients carry flock to the server as a byte-range lock); its holder removes it when done,
        and a waiter that wakes on a removed file retries on the new one.
        """
        path = self.root / "locks" / f"{artifact_id}.lock"
        waited = False
        while True:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)  # the last holder may have removed the folder
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as error:
                raise os_error("create the lock file", path, error) from None
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as error:
                    if error.errno not in (errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK):
                        raise os_error("lock", path, error) from None
                    if on_wait is not None and not waited:
                        on_wait()
                    waited = True
                    fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    current = os.stat(path).st_ino
                except FileNotFoundError:
                    current = None
                if current != os.fstat(fd).st_ino:  # the holder removed it while we waited: lock the new one
                    continue
                try:
                    yield
                finally:
                    with contextlib.suppress(OSError):
                        path.unlink()
                return
            finally:
                os.close(fd)  # closing drops the lock

    def checkpoint_path(self, artifact_id: str) -> Path:
        return self.root / "checkpoints" / f"{artifact_id}.pt"

    def save_checkpoint(self, artifact_id: str, state: dict[str, Any]) -> None:
        """Resumable state (tensors, numbers, strings, dicts of them), loadable with weights_only, behind a digest."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getvalue()
        digest = hashlib.sha256(payload).hexdigest().encode()
        atomic_write(self.checkpoint_path(artifact_id), [_CHECKPOINT_MAGIC, digest, b"\n", payload])

    def load_checkpoint(self, artifact_id: str) -> dict[str, Any] | None:
        """The saved state, None without a checkpoint; DamagedCheckpoint when it fails its digest or won't load."""
        path = self.checkpoint_path(artifact_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # no checkpoint: the stage starts from scratch, nothing is skipped
            return None
        except OSError as error:
            raise os_error("read", path, error) from None
        legacy = not data.startswith(_CHECKPOINT_MAGIC)  # ltstg 0.1 wrote bare torch.save files, no digest
        head = len(_CHECKPOINT_MAGIC) + 65
        digest, payload = (b"", data) if legacy else (data[len(_CHECKPOINT_MAGIC) : head - 1], data[head:])
        if not legacy and hashlib.sha256(payload).hexdigest().encode() != digest:
            raise DamagedCheckpoint(f"checkpoint {path} is damaged (its digest does not match)")
        try:
            state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for a damaged pickle
            raise DamagedCheckpoint(f"checkpoint {path} does not load ({error})") from None
        if legacy:
            state["_legacy"] = True  # loaded, but nothing vouches for it: the caller says so
        return state

    def clear_checkpoint(self, artifact_id: str) -> None:
        with contextlib.suppress(OSError):
            self.checkpoint_path(artifact_id).unlink(missing_ok=True)

    def stale_files(self) -> list[Path]:
        """Temporary files of dead writers anywhere in the store, for `inspect verify`."""
        return [p for folder in (self.objects, self.refs, self.root / "checkpoints") for p in stale_temp_files(folder)]


def require_kind(artifact: Artifact, kind: str) -> Artifact:
    """The artifact, if it is of `kind`; a stage handed another kind says so in one line."""
    if artifact.kind != kind:
        raise LtstgError(f"artifact {artifact.id[:SHORT]} is a {artifact.kind} artifact, not a {kind}.")
    return artifact
