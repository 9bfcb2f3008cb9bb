import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ltstg.errors import LtstgError
from ltstg.store import Store, artifact_id, atomic_write


def put(store, kind="dataset", settings=None, parents=(), created="2026-01-01T00:00:00", value=1.0):
    aid = artifact_id(kind, settings or {"x": value}, list(parents))
    store.put(aid, {"t": torch.full((3, 2), value)}, {"kind": kind, "parents": list(parents), "created": created})
    return aid


def test_id_is_deterministic_and_depends_on_what_defines_the_result():
    a = artifact_id("stg", {"memory": 600, "lr": 1e-3}, ["p1"])
    assert a == artifact_id("stg", {"lr": 1e-3, "memory": 600}, ["p1"])
    assert a != artifact_id("stg", {"memory": 1200, "lr": 1e-3}, ["p1"])
    assert a != artifact_id("stg", {"memory": 600, "lr": 1e-3}, ["p2"])
    assert a != artifact_id("features", {"memory": 600, "lr": 1e-3}, ["p1"])
    assert len(a) == 64


def test_put_get_round_trip(tmp_path):
    store = Store(tmp_path)
    aid = put(store)
    artifact = store.get(aid, "dataset")
    assert torch.equal(artifact["t"], torch.ones(3, 2))
    assert artifact.meta["id"] == aid and artifact.kind == "dataset"
    with pytest.raises(LtstgError, match="not a features"):
        store.get(aid, "features")
    with pytest.raises(LtstgError, match="has no tensor 'nope'"):
        artifact["nope"]


@pytest.mark.parametrize("where", ["data", "header", "metadata"])
def test_flipped_byte_is_a_clear_error(tmp_path, where):
    store = Store(tmp_path)
    aid = put(store)
    path = store.path(aid)
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + length].decode()
    offset = {
        "data": len(data) - 3,
        "header": 8 + header.index('"shape"') + 10,
        "metadata": 8 + header.index("2026-01-01") + 3,
    }[where]
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(LtstgError, match=aid[:12]):
        store.get(aid)
    problems = [p for _, p in store.verify() if p]
    assert len(problems) == 1 and aid[:12] in problems[0]


def test_truncated_file_is_a_clear_error(tmp_path):
    store = Store(tmp_path)
    aid = put(store)
    store.path(aid).write_bytes(store.path(aid).read_bytes()[:5])
    with pytest.raises(LtstgError, match="corrupt"):
        store.get(aid)


def test_interrupted_write_leaves_no_visible_artifact(tmp_path, monkeypatch):
    store = Store(tmp_path)

    def crash(src, dst):
        raise KeyboardInterrupt("killed between write and rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        put(store)
    monkeypatch.undo()
    assert store.ids() == [] and store.list() == []
    assert list((tmp_path / "objects").iterdir()) == []


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "f"
    atomic_write(path, [b"abc"])
    atomic_write(path, [b"de", b"f"])
    assert path.read_bytes() == b"def"


def test_resolve_prefix_name_newest_and_errors(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(LtstgError, match="no dataset artifact"):
        store.resolve(None, "dataset")
    old = put(store, created="2026-01-01T00:00:00", value=1.0)
    new = put(store, created="2026-01-02T00:00:00", value=2.0)
    other = put(store, kind="features", parents=[new], created="2026-01-03T00:00:00")
    assert store.resolve(None, "dataset") == new
    assert store.resolve(old[:10], "dataset") == old
    store.set_name("baseline", old)
    assert store.resolve("baseline", "dataset") == old
    with pytest.raises(LtstgError, match="not a features"):
        store.resolve("baseline", "features")
    with pytest.raises(LtstgError, match="no artifact or name 'zz'"):
        store.resolve("zz", "dataset")
    with pytest.raises(LtstgError, match="not a dataset"):
        store.resolve(other[:12], "dataset")
    # a prefix shared by two ids of the kind is ambiguous and lists the candidates
    shared = os.path.commonprefix([old, new])
    if shared:
        with pytest.raises(LtstgError, match="ambiguous"):
            store.resolve(shared, "dataset")
    with pytest.raises(LtstgError, match="ambiguous"):
        for i in range(40):  # make two ids of one kind share a first character
            put(store, value=10.0 + i)
        ids = store.ids()
        first = next(c for c in "0123456789abcdef" if sum(i.startswith(c) and store.info(i).kind == "dataset" for i in ids) > 1)
        store.resolve(first, "dataset")
    with pytest.raises(LtstgError, match="invalid name"):
        store.set_name("../x", old)


def test_lineage_and_names(tmp_path):
    store = Store(tmp_path)
    root = put(store)
    child = put(store, kind="features", parents=[root])
    grandchild = put(store, kind="stg", parents=[child])
    tree = store.lineage(grandchild)
    assert tree["info"].kind == "stg"
    assert tree["parents"][0]["info"].id == child
    assert tree["parents"][0]["parents"][0]["info"].id == root
    store.set_name("a", root)
    store.set_name("b", root)
    assert store.names() == {root: ["a", "b"]}


def test_checkpoints_round_trip_and_clear(tmp_path):
    store = Store(tmp_path)
    assert store.load_checkpoint("x" * 64) is None
    state = {"epoch": 3, "weights": torch.arange(4.0), "nested": {"a": [1, 2]}, "text": "{}"}
    store.save_checkpoint("x" * 64, state)
    loaded = store.load_checkpoint("x" * 64)
    assert loaded["epoch"] == 3 and torch.equal(loaded["weights"], torch.arange(4.0)) and loaded["nested"] == {"a": [1, 2]}
    store.checkpoint_path("x" * 64).write_bytes(b"garbage")
    with pytest.raises(LtstgError, match="does not load"):
        store.load_checkpoint("x" * 64)
    store.clear_checkpoint("x" * 64)
    assert not store.checkpoint_path("x" * 64).exists()


def test_a_checkpoint_of_the_previous_format_still_loads_and_is_marked(tmp_path):
    """ltstg 0.1 wrote bare torch.save files: a long run started before an upgrade must not start over."""
    store = Store(tmp_path)
    path = store.checkpoint_path("y" * 64)
    path.parent.mkdir(parents=True)
    torch.save({"epoch": 7, "weights": torch.ones(2)}, path)
    state = store.load_checkpoint("y" * 64)
    assert state["epoch"] == 7 and state["_legacy"] is True
    path.write_bytes(b"\x80junk")
    with pytest.raises(LtstgError, match="does not load"):
        store.load_checkpoint("y" * 64)


def test_one_resolve_serves_every_way_of_naming_an_artifact(tmp_path):
    store = Store(tmp_path / "s")
    parent_a, parent_b = "a" * 64, "b" * 64
    for index, (kind, parents) in enumerate([("features", []), ("stg", [parent_a]), ("stg", [parent_b]),
                                             ("stg", [parent_a])]):
        artifact_id = f"{index}" * 64
        store.put(artifact_id, {"x": torch.zeros(1)}, {"kind": kind, "parents": parents,
                                                       "created": f"2026-01-0{index + 1}"})
    assert store.resolve(None, "stg") == "3" * 64  # the newest
    assert store.resolve(None, "stg", parent=parent_b) == "2" * 64  # the newest made from b
    assert [i.id[0] for i in store.children(parent_a, "stg")] == ["1", "3"]
    assert store.resolve("0") == "0" * 64  # an id prefix of any kind
    store.set_name("mine", "1" * 64)
    assert store.resolve("mine") == "1" * 64 and store.find("mine", "stg").id == "1" * 64
    with pytest.raises(LtstgError, match="no stg artifact made from cccccccccccc"):
        store.resolve(None, "stg", parent="c" * 64)
    with pytest.raises(LtstgError, match="'mine' is a stg artifact, not a features"):
        store.resolve("mine", "features")
    with pytest.raises(LtstgError, match="name the artifact"):
        store.resolve(None)


FORMAT1 = Path(__file__).parent / "data" / "format1"


def format1_tensors():
    """What tests/data/format1 holds: written by the first store (safetensors.torch.save, then a digest)."""
    g = torch.Generator().manual_seed(0)
    return {"features": torch.randn(5, 3, generator=g), "labels": torch.tensor([0, 1, 2, 1, 0]),
            "half": torch.randn(2, 2, generator=g).half(), "mask": torch.tensor([True, False, True]),
            "images": torch.randint(0, 256, (1, 3, 2, 2), dtype=torch.uint8, generator=g),
            "scalar": torch.tensor(2.5, dtype=torch.float64)}


def test_an_artifact_of_the_first_format_still_loads_with_its_id(tmp_path):
    (source,) = FORMAT1.glob("*.safetensors")
    store = Store(tmp_path)
    store.objects.mkdir(parents=True)
    shutil.copy(source, store.objects)
    aid = source.name.split(".")[0]
    assert aid == artifact_id("features", {"written_by": "ltstg store format 1 (safetensors.torch.save)"}, [])
    artifact = store.get(aid, "features")
    expected = format1_tensors()
    assert set(artifact.tensors) == set(expected)
    for name, tensor in expected.items():
        assert artifact[name].dtype == tensor.dtype and torch.equal(artifact[name], tensor), name
    assert store.verify()[0][1] is None


def test_the_streamed_file_is_plain_safetensors_and_every_dtype_round_trips(tmp_path):
    store = Store(tmp_path)
    tensors = {**format1_tensors(), "empty": torch.zeros(0, 4), "strided": torch.arange(12.0).reshape(3, 4).t(),
               "bf16": torch.linspace(0, 1, 7, dtype=torch.bfloat16), "int8": torch.tensor([-3, 4], dtype=torch.int8)}
    aid = artifact_id("features", {"x": 1}, [])
    meta = store.put(aid, tensors, {"kind": "features"})
    assert meta["digest"] != "0" * 64 and meta["id"] == aid
    loaded = store.get(aid, "features")
    by_safetensors = load_file(store.path(aid))
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor) and torch.equal(by_safetensors[name], tensor), name
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape
    assert loaded.meta == meta
    loaded["features"].add_(1.0)  # copy-on-write: the file is untouched
    assert torch.equal(store.get(aid)["features"], tensors["features"])


def _peak_in_subprocess(code: str, store: Path) -> dict:
    """Runs `code` in a fresh interpreter; `peak()` there is its high-water resident memory in bytes."""
    prelude = ("import json, resource, torch\nfrom ltstg.store import Store\n"
               "def peak():\n    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
               f"store = Store({str(store)!r})\nAID = 'a' * 64\nN = 64 * 1024 * 1024\n")
    done = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_writing_and_reading_a_large_artifact_holds_no_copy_of_it(tmp_path):
    """A 256 MiB tensor: writing adds well under its size to the peak (the first store: about 3x),
    reading it back and touching every value about its size (the first store: about 3x), verifying nothing."""
    size = 64 * 1024 * 1024 * 4
    wrote = _peak_in_subprocess(
        "big = torch.arange(N, dtype=torch.int32)\nsmall = torch.ones(3, 5)\nbefore = peak()\n"
        "store.put(AID, {'big': big, 'small': small}, {'kind': 'features'})\n"
        "print(json.dumps({'extra': peak() - before}))", tmp_path)
    assert wrote["extra"] < 0.25 * size, wrote
    read = _peak_in_subprocess(
        "before = peak()\nproblems = [p for _, p in store.verify() if p]\nverified = peak() - before\n"
        "artifact = store.get(AID, 'features')\nbig = artifact['big']\nstep = 1 << 20\n"
        "same = all(torch.equal(big[i:i + step], torch.arange(i, i + step, dtype=torch.int32)) for i in range(0, N, step))\n"
        "same = same and big.shape == (N,) and torch.equal(artifact['small'], torch.ones(3, 5))\n"
        "print(json.dumps({'verified': verified, 'extra': peak() - before, 'same': same, 'problems': problems}))",
        tmp_path)
    assert read["same"] and read["problems"] == [], read
    assert read["verified"] < 0.25 * size, read
    assert read["extra"] < 1.4 * size, read
