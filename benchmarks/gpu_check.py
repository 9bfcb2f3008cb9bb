"""The GPU path in one command: the CLI in bf16 + channels_last + torch.compile, a stopped and resumed stage 1,
a 2-process DDP stage 1, the stage-1 loop against a bare timm step, the file loader at 224 px, and (not with
--cpu) `ltstg run`'s stages 2-4 spread over 2 processes against 1 (benchmarks/spread_speed.py's recipe).

Usage:  python benchmarks/gpu_check.py [--cpu] [--json FILE]

On a GPU (the default) it takes a few minutes on one H200. `--cpu` runs the same checks at toy sizes,
in fp32 without compile (what CI runs, so that the script keeps working without a GPU). Every check
prints one line; a failed check ends the run with exit status 1, a ratio below its goal is reported
(MISSED) but fails nothing, since a shared machine's timings are not the code's fault.

DDP runs on NCCL when torch sees two GPUs; on one GPU it runs on gloo over CPU processes (said in its
line), so the distributed decisions are still checked.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_throughput import BareStep, loop_rates  # noqa: E402

from ltstg.data.inputs import FileInputs  # noqa: E402
from ltstg.recipe import load_recipe  # noqa: E402
from ltstg.stages import Context, steps  # noqa: E402
from ltstg.store import Store  # noqa: E402

GPU = dict(device="cuda", precision="bf16", compile=True, model="resnet32_cifar", image=32, batch=128,
           per_class=1000, epochs=6, loop_epochs=2, rounds=3,
           files=2048, file_batch=256, big_model="resnet50", big_batch=256, model_chunks=3)
CPU = dict(device="cpu", precision="fp32", compile=False, model="resnet20_cifar", image=16, batch=32,
           per_class=24, epochs=3, loop_epochs=1, rounds=1,
           files=32, file_batch=16, big_model=None, big_batch=0, model_chunks=0)
TIMEOUT = 600


class Failed(Exception):
    pass


def ltstg(store: Path, device: str, *args: str, torchrun: int = 0, options: tuple[str, ...] = ()) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(torchrun)] \
        if torchrun else [sys.executable]
    return [*launcher, "-m", "ltstg", "--store", str(store), "--device", device, "--json", *options, *args]


def checked(command: list[str], what: str) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=_env())
    if done.returncode != 0:
        raise Failed(f"{what} exited with {done.returncode}:\n{done.stderr[-3000:]}")
    return done


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}


def write_recipe(folder: Path, size: dict) -> Path:
    path = folder / "check.yaml"
    path.write_text(
        f"dataset:\n  source: synthetic\n  size: {size['image']}\n  imbalance: 10\n  val_per_class: 5\n"
        f"  synthetic: {{num_classes: 10, train_per_class: {size['per_class']}, test_per_class: 10}}\n"
        f"pretrain:\n  model: {size['model']}\n  epochs: {size['epochs']}\n  batch_size: {size['batch']}\n"
        "  warmup_epochs: 1\n"
        f"  milestones: [{size['epochs'] - 1}]\n  eval_every: {size['epochs']}\n  precision: {size['precision']}\n"
        f"  compile: {str(size['compile']).lower()}\n  channels_last: true\n"
    )
    return path


def stopped_and_resumed(store: Path, command: Callable[..., list[str]], what: str) -> subprocess.CompletedProcess:
    """`command()` (a stage 1) stopped by `--time-limit 0` at its first epoch checkpoint (exit 3, every rank at
    the same epoch), then rerun to the end: it must resume. A stop at a checkpoint, not a signal at a moment,
    so a fast machine cannot finish the run before the stop reaches it."""
    first = subprocess.run(command(options=("--time-limit", "0")), capture_output=True, text=True, timeout=TIMEOUT,
                           env=_env())
    checkpoints = store / "checkpoints"
    # torchrun itself exits 1 when its ranks exit non-zero; its summary gives each rank's code
    stopped = first.returncode == 3 or (first.returncode == 1 and "exitcode  : 3" in first.stderr
                                        and "exitcode  : 1" not in first.stderr)
    if not stopped or not any(checkpoints.glob("[!.]*.pt")):
        raise Failed(f"{what} with --time-limit 0 exited with {first.returncode} (not 3) or kept no checkpoint:\n"
                     f"{first.stderr[-3000:]}")
    resumed = checked(command(), f"the resumed {what}")
    if "resuming from the checkpoint: epoch 2" not in resumed.stderr:
        raise Failed(f"the rerun of {what} did not resume after epoch 1:\n{resumed.stderr[-3000:]}")
    if any(checkpoints.glob("[!.]*.pt")):
        raise Failed(f"{what} left a checkpoint behind")
    return resumed


def stopped_then_resumed(store: Path, recipe: Path, device: str) -> str:
    started = time.perf_counter()
    resumed = stopped_and_resumed(store, partial(ltstg, store, device, "pretrain", "--recipe", str(recipe)), "stage 1")
    backbone = json.loads(resumed.stdout)["artifacts"][0]
    info = Store(store).get(backbone["id"], "backbone").info
    return (f"stopped after its first checkpoint and resumed: backbone {backbone['id'][:12]}, precision "
            f"{info.get('precision')}, {time.perf_counter() - started:.0f} s")


def two_process_ddp(store: Path, recipe: Path, device: str) -> str:
    nccl = device == "cuda" and torch.cuda.device_count() >= 2
    on = "cuda" if nccl else "cpu"
    command = partial(ltstg, store, on, "pretrain", "--recipe", str(recipe), "--precision",
                      "fp32" if on == "cpu" else "bf16", "--no-compile", torchrun=2)
    done = stopped_and_resumed(store, command, "2-process DDP stage 1")  # the checkpoint reaches both ranks
    printed = json.loads(done.stdout)  # one JSON document: only the first rank prints
    backbone, features = (Store(store).get(a["id"]) for a in printed["artifacts"])
    if (backbone.kind, features.kind, features.parents[0]) != ("backbone", "features", backbone.id):
        raise Failed(f"the DDP run made {backbone.kind} and {features.kind}, not a backbone and its features")
    made = [a for a in Store(store).list("features") if a.parents[0] == backbone.id]
    if len(made) != 1 or features["train_features"].shape[1] != backbone.info["feature_dim"]:
        raise Failed(f"the DDP backbone has {len(made)} features artifacts, or features of the wrong width")
    if backbone.meta["run"]["world_size"] != 2 or backbone.info.get("world_size") != 2:
        raise Failed(f"the DDP backbone records world size {backbone.meta['run']['world_size']}, not 2")
    backend = "NCCL on 2 GPUs" if nccl else "gloo on 2 CPU processes" + (" (one GPU here)" if device == "cuda" else "")
    return (f"2-process DDP ({backend}), stopped after its first checkpoint and resumed: backbone "
            f"{backbone.id[:12]} and its features, world size 2")


def loop_against_bare(store: Path, size: dict) -> tuple[str, dict]:
    recipe = load_recipe(None, {"dataset.source": "synthetic", "dataset.size": size["image"], "dataset.imbalance": 1,
                                "dataset.synthetic.num_classes": 10,
                                "dataset.synthetic.train_per_class": size["per_class"],
                                "dataset.synthetic.test_per_class": 10})
    dataset = steps.dataset_step(Context(store=Store(store)), recipe).artifact
    bf16 = size["precision"] == "bf16"
    bare = BareStep(channels_last=True, bf16=bf16, device=size["device"], model=size["model"], batch=size["batch"],
                    size=size["image"], compile=size["compile"])
    loop: list[float] = []
    bare_rates: list[float] = []
    for _ in range(size["rounds"]):
        loop += loop_rates(dataset, size["precision"], size["loop_epochs"], device=size["device"], model=size["model"],
                           batch=size["batch"], compile=size["compile"])
        bare_rates += bare.rate(max(len(loop) // size["rounds"], 2))
    looped, reference = statistics.median(loop), statistics.median(bare_rates)
    ratio = looped / reference
    figures = {"loop_img_s": looped, "bare_img_s": reference, "loop_over_bare": ratio}
    return (f"stage-1 loop {looped:.0f} img/s, bare timm step {reference:.0f} img/s ({size['model']}, batch {size['batch']}, "
            f"{size['precision']}, channels_last{', compiled' if size['compile'] else ''}): ratio {ratio:.2f} "
            f"(goal >= 0.9: {'met' if ratio >= 0.9 else 'MISSED'})"), figures


def file_loader(folder: Path, size: dict) -> tuple[str, dict]:
    """One pass of the file loader alone (decode, random-resized crop to 224, uint8 to the device) against a
    bare training step of a 224-px ImageNet model on the same device."""
    generator = torch.Generator().manual_seed(0)
    paths, labels = [], []
    for index in range(size["files"]):
        path = f"c{index % 8}/{index}.jpg"
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (300, 400, 3), dtype=torch.uint8, generator=generator)
        Image.fromarray(pixels.numpy()).save(folder / path, quality=90)
        paths.append(path)
        labels.append(index % 8)
    device = torch.device(size["device"])
    inputs = FileInputs(str(folder), {"train": (paths, torch.tensor(labels))}, 224, device)
    rates = []
    for _ in range(2):  # the first pass starts the persistent workers
        started, count = time.perf_counter(), 0
        for images, _ in inputs.train_batches(size["file_batch"], torch.Generator().manual_seed(0)):
            count += len(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(count / (time.perf_counter() - started))
    figures = {"loader_img_s": rates[-1], "loader_workers": inputs.workers}
    line = f"file loader alone {rates[-1]:.0f} img/s at 224 px ({inputs.workers} workers, uint8)"
    if size["big_model"] is None:  # a 224-px model step on the CPU takes seconds and says nothing about a GPU
        return line, figures
    model = BareStep(channels_last=True, bf16=size["precision"] == "bf16", device=size["device"],
                     model=size["big_model"], batch=size["big_batch"], size=224, num_classes=1000)
    figures["model_224_img_s"] = model_rate = statistics.median(model.rate(size["model_chunks"]))
    verdict = "keeps up" if rates[-1] >= model_rate else "would make the model wait"
    return f"{line}, {size['big_model']} bare step {model_rate:.0f} img/s ({size['precision']}): the loader {verdict}", figures


def spread_over_ranks(folder: Path) -> tuple[str, dict]:
    """`ltstg run` of benchmarks/spread_speed.py's many-candidate recipe on the GPU, 1 process against 2 (on one GPU
    both share it): stages 2-4 spread over the ranks."""
    from spread_speed import GOAL, compare

    folder.mkdir()
    one, many, one_rows, many_rows = compare(folder, 2, 2, "cuda")
    if [row["method"] for row in one_rows] != [row["method"] for row in many_rows]:
        raise Failed("the 2-process run's table has other rows than the single process's")
    ratio = many / one
    return (f"stages 2-4 of {len(one_rows)} methods x 2 seeds: 1 process {one:.0f} s, 2 processes {many:.0f} s, "
            f"ratio {ratio:.2f} (goal <= {GOAL}: {'met' if ratio <= GOAL else 'MISSED'})", {"spread_ratio": ratio})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="toy sizes on the CPU, fp32, no compile (CI)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()
    size = CPU if args.cpu else GPU
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu for the toy check", file=sys.stderr)
        return 1
    device_name = torch.cuda.get_device_name(0) if size["device"] == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {device_name}, {os.cpu_count()} cores", flush=True)
    figures: dict = {"device": device_name, "torch": torch.__version__}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        store, recipe = folder / "store", write_recipe(folder, size)
        checks = [
            ("data set", lambda: "made: " + json.loads(checked(
                ltstg(store, size["device"], "make-dataset", "--recipe", str(recipe)), "make-dataset").stdout)
                ["id"][:12]),
            ("stage 1", lambda: stopped_then_resumed(store, recipe, size["device"])),
            ("DDP", lambda: two_process_ddp(store, recipe, size["device"])),
            ("throughput", lambda: loop_against_bare(folder / "bench", size)),
            ("loader", lambda: file_loader(folder / "files", size)),
        ]
        if not args.cpu:  # the CPU suite runs stages 2-4 over ranks in tests/test_spread.py
            checks.append(("spread", lambda: spread_over_ranks(folder / "spread")))
        for name, check in checks:
            try:
                line = check()
            except (Failed, subprocess.TimeoutExpired) as error:
                print(f"FAILED {name}: {error}", flush=True)
                return 1
            if isinstance(line, tuple):
                line, measured = line
                figures.update(measured)
            print(f"ok  {name}: {line}", flush=True)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    print(f"all checks passed in {figures['seconds']:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
