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
import mmap
import os
import re
import resource
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from ltstg.errors import LtstgError

FORMAT_VERSION = 1
METADATA_KEY = "ltstg"
SHORT = 12
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MAX_HEADER = 100 * 1024 * 1024
_BLOCK = 16 * 1024 * 1024  # bytes hashed at a time when an artifact is read or verified
# safetensors' dtype names (https://github.com/huggingface/safetensors, format section)
_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint64: "U64", torch.uint32: "U32", torch.uint16: "U16", torch.uint8: "U8", torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
_DTYPES = {name: dtype for dtype, name in _DTYPE_NAMES.items()}
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


def _corrupt(label: str, what: str) -> LtstgError:
    return LtstgError(f"artifact {label} is corrupt: {what}; delete its file (`ltstg inspect verify` lists it) and "
                      "rerun what made it; a stage command's --force also replaces it.")


def _read_header(handle: io.BufferedReader, label: str) -> tuple[dict[str, Any], int]:
    """(header, offset of the data section) of an open safetensors file; a damaged start is a clear error."""
    size = os.fstat(handle.fileno()).st_size
    first = handle.read(8)
    if len(first) < 8:
        raise _corrupt(label, "the file is truncated")
    (length,) = struct.unpack("<Q", first)
    if length > min(size - 8, _MAX_HEADER):
        raise _corrupt(label, "bad header length")
    return _parse_header(handle.read(length), label), 8 + length


def _hash_rest(handle: io.BufferedIOBase, hasher: Any) -> None:
    """Feed everything from the handle's position to the end into `hasher`, one block at a time."""
    remaining = os.fstat(handle.fileno()).st_size - handle.tell()
    block = bytearray(max(1, min(_BLOCK, remaining)))  # a small artifact needs no 16 MiB buffer
    while count := handle.readinto(block):
        hasher.update(memoryview(block)[:count])


def _parse_header(data: bytes, label: str) -> dict[str, Any]:
    try:
        header = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _corrupt(label, "unreadable header") from None
    if not isinstance(header, dict):
        raise _corrupt(label, "unreadable header")
    return header


def _metadata(header: dict[str, Any], label: str) -> dict[str, Any]:
    try:
        meta = json.loads(header["__metadata__"][METADATA_KEY])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise LtstgError(f"artifact {label} is not an ltstg artifact or its metadata is corrupt.") from None
    if not isinstance(meta, dict):
        raise LtstgError(f"artifact {label} has corrupt metadata.")
    return meta


def _index(header: dict[str, Any]) -> dict[str, Any]:
    """The tensor entries of a safetensors header (name -> dtype, shape, data_offsets)."""
    return {k: v for k, v in header.items() if k != "__metadata__"}


def _hasher(index: dict[str, Any], meta: dict[str, Any]) -> Any:
    """sha256 over the tensor index and the metadata (minus the digest itself); the raw tensor bytes follow.

    The same digest as the first format's, which hashed the file's data section in one piece."""
    hasher = hashlib.sha256()
    hasher.update(canonical_json(index).encode())
    hasher.update(canonical_json({k: v for k, v in meta.items() if k != "digest"}).encode())
    return hasher


# Every tensor of an artifact starts on a 64-byte boundary of the file, and so of its mapping (pages are 4096-byte
# aligned), as a fresh CPU allocation does: oneDNN and MKL take other code paths for data misaligned to their
# vector width and sum in another order, so a tensor read back would give 1-ulp different products than the one
# that was computed (and reused artifacts different numbers from fresh ones, run to run, as the header's length
# varied). The header is padded with spaces and the gaps between tensors are filled by padding entries, as
# safetensors allows (no holes); readers skip them.
TENSOR_ALIGN = 64
PAD_PREFIX = "__pad"


def _encoded_header(index: dict[str, Any], meta: dict[str, Any]) -> bytes:
    encoded = json.dumps({"__metadata__": {METADATA_KEY: canonical_json(meta)}, **index}, separators=(",", ":")).encode()
    padding = -(8 + len(encoded)) % TENSOR_ALIGN  # the data section starts aligned
    return struct.pack("<Q", len(encoded) + padding) + encoded + b" " * padding


def _aligned_layout(tensors: dict[str, torch.Tensor], order: list[str]) -> tuple[dict[str, Any], list[str | int]]:
    """The safetensors index with every tensor at a TENSOR_ALIGN offset, and what to write in order: a tensor's
    name, or a count of padding bytes (a `__padN` entry of uint8)."""
    index: dict[str, Any] = {}
    writes: list[str | int] = []
    offset = 0
    for name in order:
        tensor = tensors[name]
        if tensor.dtype not in _DTYPE_NAMES:
            raise TypeError(f"tensor {name!r} has dtype {tensor.dtype}, which the store cannot keep")
        if name.startswith(PAD_PREFIX):
            raise TypeError(f"tensor {name!r}: names starting with {PAD_PREFIX} are the store's padding")
        gap = -offset % TENSOR_ALIGN
        if gap:
            index[f"{PAD_PREFIX}{len(writes)}"] = {"dtype": "U8", "shape": [gap], "data_offsets": [offset, offset + gap]}
            writes.append(gap)
            offset += gap
        size = tensor.numel() * tensor.element_size()
        index[name] = {"dtype": _DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}
        writes.append(name)
        offset += size
    return index, writes


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    """A tensor's bytes as safetensors stores them (C order, little-endian); no copy for a contiguous CPU tensor."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _tensor(whole: torch.Tensor, start: int, name: str, entry: Any, label: str) -> torch.Tensor:
    """One tensor of a mapped file: a view into the mapping (a copy only where a foreign writer misaligned it)."""
    try:
        dtype = _DTYPES[entry["dtype"]]
        shape = [int(n) for n in entry["shape"]]
        first, last = (int(n) for n in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise _corrupt(label, f"tensor {name!r} has a malformed entry") from None
    size = dtype.itemsize
    for n in shape:
        size *= n
    if not 0 <= first <= last <= len(whole) - start or last - first != size or min(shape, default=0) < 0:
        raise _corrupt(label, f"tensor {name!r} does not fit its data section")
    piece = whole[start + first : start + last]
    try:
        return piece.view(dtype).reshape(shape)
    except RuntimeError:  # an offset that is not a multiple of the element size
        return piece.clone().view(dtype).reshape(shape)


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


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[io.BufferedRandom]:
    """A temporary file to write (and seek back into), fsynced and renamed onto `path` when the block ends:
    readers never see half a file.

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
        with open(tmp, "w+b") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as error:
        raise os_error("write", path, error) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _os_error_behind(error: BaseException) -> OSError | None:
    """The OSError an exception was raised while handling, if any."""
    seen = error.__context__ or error.__cause__
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__context__ or seen.__cause__
    return seen


def _state_bytes(state: Any) -> int:
    """The tensor bytes in a (nested) checkpoint state: what its file needs, give or take the pickle."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_state_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_state_bytes(value) for value in state)
    return 0


def atomic_write(path: Path, chunks: list[bytes | memoryview]) -> None:
    """`atomic_file` for content already in memory."""
    with atomic_file(path) as handle:
        for chunk in chunks:
            handle.write(chunk)


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
        for folder in (self.objects, self.root / "locks", self.refs, self.root / "checkpoints"):
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
    def put(self, artifact_id: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
        """Write one artifact atomically, streaming each tensor into the file while hashing it; returns the
        metadata as written (digest included).

        The header is written first with a placeholder digest of the same length and filled in at the end, so
        no copy of the file is ever held: the peak is the largest tensor that had to be made contiguous or
        brought to the CPU. Tensors are laid out by element size (largest first), as safetensors does, so
        every tensor of the file is aligned for a memory-mapped read (at TENSOR_ALIGN, padding between them).
        """
        meta = {**meta, "id": artifact_id, "format": FORMAT_VERSION, "digest": "0" * 64}
        order = sorted(tensors, key=lambda name: (-tensors[name].element_size(), name))
        index, writes = _aligned_layout(tensors, order)
        hasher = _hasher(index, meta)
        placeholder = _encoded_header(index, meta)
        path = self.path(artifact_id)
        with atomic_file(path) as handle:
            handle.write(placeholder)
            for write in writes:
                raw = memoryview(bytes(write)) if isinstance(write, int) else _raw_bytes(tensors[write])
                hasher.update(raw)
                handle.write(raw)
                del raw
            meta["digest"] = hasher.hexdigest()
            header = _encoded_header(index, meta)
            if len(header) != len(placeholder):
                raise RuntimeError("the header changed length when its digest was filled in")
            handle.seek(0)
            handle.write(header)
        return meta

    # -- read ----------------------------------------------------------------------------------
    def info(self, artifact_id: str) -> ArtifactInfo:
        """Header-only view (fast): for listings and lineage, not for use in computation."""
        path = self.path(artifact_id)
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                try:
                    header, _ = _read_header(handle, artifact_id[:SHORT])
                    return ArtifactInfo(artifact_id, path, size, _metadata(header, artifact_id[:SHORT]))
                except LtstgError as error:
                    return ArtifactInfo(artifact_id, path, size, {}, str(error))
        except FileNotFoundError:
            raise LtstgError(f"artifact {artifact_id[:SHORT]} is not in {self.root}.") from None
        except OSError as error:  # a folder named like an artifact, a file without read permission
            return ArtifactInfo(artifact_id, path, 0, {}, str(os_error("read", path, error)))

    def get(self, artifact_id: str, kind: str | None = None) -> Artifact:
        """Verify an artifact (its digest, read block by block) and open its tensors memory-mapped.

        Any mismatch is an error naming it, never silent use. The tensors are copy-on-write views of the file:
        pages are read when a stage touches them, so a stage that uses one tensor of a large artifact reads
        only that one, and nothing it changes reaches the file. Artifacts are replaced by rename, never
        rewritten in place, so a mapping stays valid while another run writes the same id.
        """
        label = artifact_id[:SHORT]
        path = self.path(artifact_id)
        try:
            with open(path, "rb") as handle:
                index, meta, start = self._verified(handle, artifact_id)
                if kind is not None and meta.get("kind") != kind:
                    raise LtstgError(f"artifact {label} is a {meta.get('kind')} artifact, not a {kind}.")
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        except FileNotFoundError:
            raise LtstgError(f"artifact {label} is not in {self.root}.") from None
        except OSError as error:
            raise os_error("read", path, error) from None
        whole = torch.frombuffer(mapped, dtype=torch.uint8)  # holds the mapping for as long as a tensor lives
        tensors = {name: _tensor(whole, start, name, entry, label) for name, entry in index.items()
                   if not name.startswith(PAD_PREFIX)}
        return Artifact(artifact_id, meta, tensors)

    def _verified(self, handle: io.BufferedReader, artifact_id: str) -> tuple[dict[str, Any], dict[str, Any], int]:
        """(tensor index, metadata, offset of the data section) of an open artifact whose digest matches."""
        label = artifact_id[:SHORT]
        header, start = _read_header(handle, label)
        meta = _metadata(header, label)
        index = _index(header)
        hasher = _hasher(index, meta)
        _hash_rest(handle, hasher)
        if meta.get("digest") != hasher.hexdigest() or meta.get("id") != artifact_id:
            raise _corrupt(label, "its content digest does not match")
        return index, meta, start

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
        """Re-check every digest, block by block without loading any tensor: (info, problem or None)."""
        results = []
        for info in self.list():
            try:
                with open(info.path, "rb") as handle:
                    self._verified(handle, info.id)
                results.append((info, None))
            except LtstgError as error:
                results.append((info, str(error)))
            except OSError as error:
                results.append((info, str(os_error("read", info.path, error))))
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
        """Resumable state (tensors, numbers, strings, dicts of them), loadable with weights_only, behind a digest.

        torch.save writes straight into the file after a placeholder digest, which is filled in from the
        payload read back block by block: no copy of the state is held (fit-stg's running targets are N x D).
        A write the file system refuses is one line with the size the checkpoint needs."""
        try:
            self._write_checkpoint(self.checkpoint_path(artifact_id), state)
        except LtstgError as error:
            raise LtstgError(f"{error} The checkpoint needs about {_state_bytes(state) / 1e6:.1f} MB.") from None

    @staticmethod
    def _write_checkpoint(path: Path, state: dict[str, Any]) -> None:
        with atomic_file(path) as handle:
            handle.write(_CHECKPOINT_MAGIC + b"0" * 64 + b"\n")
            start = handle.tell()
            try:
                torch.save(state, handle)
            except RuntimeError as error:  # the zip writer's "unexpected pos" hides the write's OSError
                refused = _os_error_behind(error)
                if refused is None:
                    raise
                raise refused from None  # atomic_file turns it into one line and removes the partial file
            handle.flush()
            handle.seek(start)
            hasher = hashlib.sha256()
            _hash_rest(handle, hasher)
            handle.seek(len(_CHECKPOINT_MAGIC))
            handle.write(hasher.hexdigest().encode())

    def load_checkpoint(self, artifact_id: str) -> dict[str, Any] | None:
        """The saved state, None without a checkpoint; DamagedCheckpoint when it fails its digest or won't load.

        Hashed block by block and loaded from the file, as it was written: no copy of the file is held beside
        the state it loads (fit-stg's running targets are N x D)."""
        path = self.checkpoint_path(artifact_id)
        if not path.exists():  # no checkpoint: the stage starts from scratch, nothing is skipped
            return None
        try:
            with open(path, "rb") as handle:
                head = handle.read(len(_CHECKPOINT_MAGIC))
                legacy = head != _CHECKPOINT_MAGIC  # ltstg 0.1 wrote bare torch.save files, no digest
                if legacy:
                    handle.seek(0)
                else:
                    digest = handle.read(65)[:64]
                    start = handle.tell()
                    hasher = hashlib.sha256()
                    _hash_rest(handle, hasher)
                    if hasher.hexdigest().encode() != digest:
                        raise DamagedCheckpoint(f"checkpoint {path} is damaged (its digest does not match)")
                    handle.seek(start)
                try:
                    state = torch.load(handle, map_location="cpu", weights_only=True)
                except Exception as error:  # torch raises many types for a damaged pickle
                    raise DamagedCheckpoint(f"checkpoint {path} does not load ({error})") from None
        except OSError as error:
            raise os_error("read", path, error) from None
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
