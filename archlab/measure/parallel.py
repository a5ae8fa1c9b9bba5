"""Measuring several specs at once, one process each (`archlab compare --measure
--parallel`): on a machine with several GPUs, each spec gets its own GPU
(`CUDA_VISIBLE_DEVICES`) and its own `archlab profile` process, which writes its results
document; the results are merged, in the specs' order, into one sweep's results as if one
process had measured them. More specs than GPUs wait for a free one. A process that fails
(exits, crashes, leaves no document) gives failed rows for its spec's cases, with the end of
its error output; the other specs go on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from archlab.lang.plan import Plan
from archlab.measure.cases import Sizes, _unbuilt_results, result_from_dict
from archlab.measure.result import Result

POLL_S = 0.2


def gpu_slots(count: int) -> list[dict[str, str]]:
    """One environment per visible GPU: CUDA_VISIBLE_DEVICES naming that GPU alone (in the
    parent's numbering when it sets CUDA_VISIBLE_DEVICES itself)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    ids = ids[:count] if ids else [str(i) for i in range(count)]
    return [{"CUDA_VISIBLE_DEVICES": i} for i in ids]


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])[:400]


class _Job:
    def __init__(self, index: int, spec: str, folder: Path, slot: int, argv: list[str], env):
        self.index, self.slot, self.folder = index, slot, folder
        folder.mkdir(parents=True, exist_ok=True)
        self.log = open(folder / "stderr.log", "w")  # noqa: SIM115 - closed in `finish`
        command = [sys.executable, "-m", "archlab.cli", "profile", spec, *argv]
        command += ["--out", str(folder / "out")]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            env={**os.environ, **env},
        )

    def finish(self) -> tuple[int, dict | None, str]:
        self.log.close()
        try:
            doc = json.loads((self.folder / "out" / "profile.json").read_text())
        except (OSError, ValueError):
            doc = None
        return self.proc.returncode, doc, _tail(self.folder / "stderr.log")


def run_parallel(
    plans: list[Plan],
    specs: list[str],
    argv: list[str],
    slots: list[dict[str, str]],
    modes: list[str],
    sizes: Sizes,
    on_result: Callable | None = None,
    quiet: bool = False,
) -> tuple[list[Result], dict | None, list[str]]:
    """Measure spec i (file `specs[i]`, compiled as `plans[i]`, whose name the results
    take) in its own `archlab profile SPEC *argv` process, at most one per slot (an
    environment), and merge: (results in the specs' order, the first document's device
    peaks, the notes of every document once each)."""
    waiting = list(range(len(specs)))
    running: dict[int, _Job] = {}
    done: dict[int, list[Result]] = {}
    docs: dict[int, dict] = {}
    ended: list[str] = []
    with tempfile.TemporaryDirectory(prefix="archlab-parallel-") as tmp:
        while waiting or running:
            free = [s for s in range(len(slots)) if s not in {j.slot for j in running.values()}]
            while waiting and free:
                i, slot = waiting.pop(0), free.pop(0)
                running[i] = _Job(i, specs[i], Path(tmp) / str(i), slot, argv, slots[slot])
                _say(
                    quiet,
                    f"[{i + 1}/{len(specs)}] {plans[i].name}: started ({_where(slots[slot])})",
                )
            time.sleep(POLL_S)
            for i, job in list(running.items()):
                if job.proc.poll() is None:
                    continue
                del running[i]
                code, doc, tail = job.finish()
                if doc is not None:  # a process cut short still wrote what it measured
                    docs[i] = doc
                    done[i] = [_renamed(result_from_dict(d), plans[i]) for d in doc["results"]]
                else:
                    why = RuntimeError(f"the profile process exited with status {code}: {tail}")
                    done[i] = _unbuilt_results(plans[i], "model", modes, sizes, why)
                if code != 0 and doc is not None:
                    ended.append(
                        f"{plans[i].name}: the profile process exited with status {code} after "
                        f"{len(done[i])} case(s): {tail}"
                    )
                _say(quiet, f"[{i + 1}/{len(specs)}] {plans[i].name}: done (exit {code})")
                if on_result:
                    merged = [r for k in sorted(done) for r in done[k]]
                    on_result(merged, _peaks(docs))
    results = [r for i in range(len(specs)) for r in done[i]]
    notes: list[str] = []
    for i in sorted(docs):
        notes += [
            n for n in docs[i].get("notes", []) if n not in notes and not n.startswith("partial:")
        ]
    notes += ended
    where = "GPU" if slots and "CUDA_VISIBLE_DEVICES" in slots[0] else "process on the CPU"
    notes.append(
        f"measured in parallel: one spec per {where}, {min(len(slots), len(specs))} at once"
        + ("" if where == "GPU" else " (they share the CPU's cores: times compete)")
    )
    return results, _peaks(docs), notes


def _renamed(r: Result, plan: Plan) -> Result:
    r.spec, r.file = plan.name, plan.file
    return r


def _peaks(docs: dict[int, dict]) -> dict | None:
    return next((docs[i].get("device") for i in sorted(docs) if docs[i].get("device")), None)


def _where(env: dict[str, str]) -> str:
    gpu = env.get("CUDA_VISIBLE_DEVICES")
    return f"GPU {gpu}" if gpu is not None else "CPU"


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)
