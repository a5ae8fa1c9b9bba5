"""Measurements on a device: timing one model or layer (`profile`), decode throughput
(`throughput`), sweeps of sizes and modes (`sweep`), and scaled-down copies (`scale`)."""

MODES = ("train", "prefill", "decode", "throughput")  # what `profile --mode` measures
