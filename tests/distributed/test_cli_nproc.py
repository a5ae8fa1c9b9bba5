"""`archlab profile --nproc 2` on the CPU (two ranks over gloo, started by torch's elastic
launcher), end to end; the same under torchrun; a run past its time limit is one result
row, never a hang; a rank's failure becomes one row; usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import archlab
from archlab.cli import main
from archlab.cost.memory import train_memory

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "specs" / "tiny" / "rat.yaml"
FAST = ["--seq", "32", "--repeats", "1", "--warmup", "0", "--full-size", "--timeout", "120"]


def run_json(capsys, *argv) -> tuple[int, dict]:
    status = main(list(map(str, argv)))
    return status, json.loads(capsys.readouterr().out)


def test_nproc_2_end_to_end(capsys):
    status, doc = run_json(capsys, "profile", TINY, "--nproc", 2, *FAST, "--optimizer", "--json")
    assert status == 0 and doc["schema"] == "archlab.profile/1"
    assert doc["settings"]["nproc"] == 2 and doc["device"]["matmul_tflops"] > 0
    sharded, single = doc["results"]
    assert [sharded["extra"]["nproc"], single["extra"]["nproc"]] == [2, 1]
    for r in (sharded, single):
        assert r["status"] == "ok" and r["mode"] == "train" and r["timing"]["runs"] == 1
        assert "includes an AdamW step" in r["notes"]
    x = sharded["extra"]
    assert len(x["rank_median_s"]) == 2 and len(x["rank_loss"]) == 2
    assert x["tokens_per_s_total"] == pytest.approx(2 * x["tokens_per_s_per_gpu"])
    assert sharded["tokens_per_s"] == pytest.approx(x["tokens_per_s_total"])
    assert x["scaling_efficiency"] == pytest.approx(
        sharded["tokens_per_s"] / (2 * single["tokens_per_s"])
    )
    plan = archlab.compile(str(TINY))
    assert x["predicted_memory_bytes"] == train_memory(plan, 1, 32, shards=2).total
    assert single["extra"]["predicted_memory_bytes"] == train_memory(plan, 1, 32).total
    assert sharded["peak_memory_bytes"] is None  # measured on CUDA only


def test_nproc_timeout_is_one_row(capsys):
    """Ranks that run past --timeout are stopped by their watchdogs: one failed row."""
    start = time.perf_counter()
    status, doc = run_json(
        capsys, "profile", TINY, "--nproc", 2, "--seq", "32", "--full-size",
        "--repeats", "100000", "--max-time", "600", "--timeout", "1", "--no-baseline", "--json",
    )  # fmt: skip
    assert status == 0 and time.perf_counter() - start < 60
    (row,) = doc["results"]
    assert row["status"] == "error" and "timeout" in row["error"] and row["timing"] is None
    assert any("stopped at a failure" in n for n in doc["notes"])


def test_a_failed_rank_is_one_row(tmp_path):
    """The launcher's side of a failure: rank 0's rows of the cases done, then one row for
    the failing case from the first rank that failed, the others' errors and the cases
    not run in the notes."""
    from archlab.measure.dist_launch import failed
    from archlab.measure.distributed import DistJob
    from archlab.measure.result import Result, Settings, Timing

    plan = archlab.compile(str(TINY))
    job = DistJob([plan], [None], [16, 32, 64], 1, None, Settings(), False, "cuda", 60, 30,
                  str(tmp_path))  # fmt: skip
    done = Result(plan.name, plan.file, "model, 2 processes", "train", 1, 16, "float32", "cuda")
    done.timing = Timing.of([0.1])
    (tmp_path / "partial.json").write_text(json.dumps({"results": [done.to_dict()], "peaks": {}}))
    case = {"plan": 0, "batch": 1, "seq_len": 32, "nproc": 2}
    ranks = [
        (0, "error", "Connection closed by peer", 2.0),
        (1, "oom", "OutOfMemoryError: CUDA out of memory", 1.0),  # the first to fail
    ]
    for rank, status, error, when in ranks:
        (tmp_path / f"rank{rank}.json").write_text(
            json.dumps({"rank": rank, "time": when, "case": case, "status": status, "error": error})
        )
    results, _, notes = failed(job, 2, {})
    assert [r.status for r in results] == ["ok", "oom"]
    predicted = train_memory(plan, 1, 32, shards=2).total - train_memory(plan, 1, 32).optimizer // 2
    assert results[1].extra["predicted_memory_bytes"] == predicted  # no --optimizer: no AdamW
    assert results[1].seq_len == 32 and results[1].error.startswith("rank 1: OutOfMemoryError")
    assert any("rank 0: Connection closed" in n for n in notes)
    assert any(n.startswith("not run:") and "T=64" in n and "T=32" not in n for n in notes)
    # a rank that died without a word (a signal): the launcher's record of it
    for p in tmp_path.glob("rank*.json"):
        p.unlink()
    results, _, _ = failed(job, 2, {1: (-9, "Signal 9 (SIGKILL) received by PID 7", 0)})
    assert results[-1].status == "error" and "rank 1: Signal 9" in results[-1].error


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--mode", "decode"], "--mode train"),
        (["--layer", "rat"], "does not take --layer"),
        (["--nproc", "0"], "--nproc must be >= 1"),
        (["--timeout", "0"], "--timeout must be > 0"),
        (["--mode", "trian"], "did you mean 'train'"),
    ],
)
def test_usage_errors(capsys, argv, message):
    args = ["profile", str(TINY), *(["--nproc", "2"] if "--nproc" not in argv else []), *argv]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_checkpoint_needs_nproc(capsys):
    assert main(["profile", str(TINY), "--checkpoint"]) == 2
    assert "--nproc" in capsys.readouterr().err


def test_under_torchrun(tmp_path):
    """`torchrun --nproc-per-node 2 -m archlab.cli profile ...`: rank 0 alone prints the
    document (and writes --out), the 1-process case included."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--standalone", "-m", "archlab.cli", "profile", str(TINY), *FAST,
               "--checkpoint", "--json", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=150, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout)  # one document: only rank 0 printed
    assert [r["extra"]["nproc"] for r in doc["results"]] == [2, 1]
    assert all(r["status"] == "ok" and r["extra"]["checkpoint"] for r in doc["results"])
    assert json.loads((tmp_path / "profile.json").read_text())["settings"]["nproc"] == 2


def test_the_launchers_backstop_alarm():
    """Past the ranks' watchdogs, the launching process's own alarm ends the launcher."""
    from archlab.measure.dist_launch import RunTimeout, _alarm

    start = time.perf_counter()
    with pytest.raises(RunTimeout), _alarm(0.2):
        time.sleep(5)
    assert time.perf_counter() - start < 2
