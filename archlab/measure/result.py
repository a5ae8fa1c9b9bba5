"""What a measurement produces, without torch: how it was timed (`Settings`), the spread
of its runs (`Timing`) and one measured case (`Result`), as the JSON documents of
`profile` and `compare` hold them (schema `SCHEMA`, docs/profile.md)."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

SCHEMA = "archlab.profile/1"


@dataclass
class Settings:
    """How to time: runs, time budget per case, CUDA graphs for decode, AdamW in train,
    torch.compile of train, prefill and decode (`compile`; its time is apart), kernel
    tables of the cases in `trace_dir` (archlab.measure.trace, after the timing). A case
    runs `repeats` runs, more (up to `max_runs`) while the spread of its runs is above
    `stable_spread`, and starts no new run once `max_time_s` of timed runs have passed
    and at least 3 (or, when one run alone outlasts the budget, 1) are in."""

    warmup: int = 1
    repeats: int = 5
    max_time_s: float = 10.0
    cuda_graphs: bool = True
    optimizer: bool = False
    compile: bool = False  # train, prefill and decode under torch.compile (compiled.py)
    stable_spread: float = 0.2  # (p90 - p10) / median at which a case counts as stable
    trace_dir: str | None = None  # after each timing, a kernel table there (trace.py)

    @property
    def max_runs(self) -> int:
        """The most runs a case that is not yet stable gets (its time budget permitting)."""
        return max(100, 10 * self.repeats) if self.repeats >= 3 else max(1, self.repeats)


@dataclass
class Timing:
    """Seconds per run over the timed runs: median, 10th/90th percentile, min, max."""

    median_s: float
    p10_s: float
    p90_s: float
    min_s: float
    max_s: float
    runs: int

    @classmethod
    def of(cls, samples: list[float]) -> Timing:
        s = sorted(samples)

        def q(f: float) -> float:
            return s[min(len(s) - 1, max(0, round(f * (len(s) - 1))))]

        return cls(statistics.median(s), q(0.1), q(0.9), s[0], s[-1], len(s))

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: the relative spread of the runs."""
        return (self.p90_s - self.p10_s) / self.median_s if self.median_s else 0.0


@dataclass
class Result:
    """One measured case. `seq_len` is T: the tokens per sequence (train, prefill), the
    position decoded at (decode), or the prompt length (throughput). `status` is "ok",
    "oom" or "error"; on "ok", `timing` and the figures derived from it are set."""

    spec: str
    file: str
    target: str  # "model" or "layer <kind>(<params>)"
    mode: str
    batch: int
    seq_len: int
    dtype: str
    device: str
    status: str = "ok"
    error: str | None = None
    timing: Timing | None = None
    unstable: bool = False  # the runs' spread stayed above Settings.stable_spread
    tokens_per_s: float | None = None
    flops: int | None = None  # analytic matmul FLOPs of one timed run
    tflops: float | None = None
    flops_frac: float | None = None  # of the device's measured matmul peak
    bytes: int | None = None  # analytic bytes read by one decode step (weights + cache)
    gbps: float | None = None
    bw_frac: float | None = None  # of the device's measured copy bandwidth
    peak_memory_bytes: int | None = None  # CUDA only
    cache_bytes_measured: int | None = None
    cache_bytes_analytic: int | None = None
    backends: dict[str, str] = field(default_factory=dict)  # kind -> backend that ran
    cuda_graph: bool | None = None
    compiled: bool = False  # timed under torch.compile (False: eagerly, a failure noted)
    compile_s: float | None = None  # wall time of the calls that compiled, before any timing
    scaled: str | None = None  # what the scaled-down model is, when it is one
    extra: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def judge_timing(r: Result, settings: Settings) -> None:
    """Flag a result of `profile.measure` whose runs did not settle (`unstable`, with a
    note), and say so when the case's time budget cut it below 3 runs."""
    t = r.timing
    if r.status != "ok" or t is None:
        return
    if t.runs >= 3 and t.spread > settings.stable_spread:
        r.unstable = True
        r.notes.append(
            f"unstable: the runs spread {100 * t.spread:.0f}% of the median (p10-p90) after "
            f"{t.runs} runs, above {100 * settings.stable_spread:.0f}%; is the machine busy?"
        )
    elif t.runs < min(3, settings.repeats):
        r.notes.append(
            f"{t.runs} run{'s' if t.runs > 1 else ''} only: one run takes longer than the "
            f"case's time budget (--max-time {settings.max_time_s:g} s)"
        )


def short_error(e: BaseException) -> str:
    """An error in one line: 'RuntimeError: the first line of its message' (200 characters
    of it at most)."""
    line = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {line[:200]}"
