"""What a measurement produces, without torch: how it was timed (`Settings`), the spread
of its runs (`Timing`) and one measured case (`Result`), as the JSON documents of
`profile` and `compare` hold them (schema `SCHEMA`, docs/profile.md)."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

SCHEMA = "archlab.profile/1"


@dataclass
class Settings:
    """How to time: runs, time budget per case, CUDA graphs for decode, AdamW in train."""

    warmup: int = 1
    repeats: int = 5
    max_time_s: float = 10.0
    cuda_graphs: bool = True
    optimizer: bool = False


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
    scaled: str | None = None  # what the scaled-down model is, when it is one
    extra: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)
