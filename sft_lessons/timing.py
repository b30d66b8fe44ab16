"""Timing and memory measurement: device sync, interleaved timing, peak memory, GEMM rate (第 3 章, notebooks/03_lora_math.ipynb).

Every timing in the course is taken by `timed_call` (one call, device synchronised before and after);
side-by-side comparisons (chapters 2, 3, 5) use `interleaved_times` (warm-up, then rounds A B C, C B A, ...).
The bench's training loop and padding comparison interleave their own rounds around `timed_call`, because they also
measure peak memory or check losses per step.
"""

from __future__ import annotations

import gc
import os
import statistics
import threading
import time
from collections.abc import Callable

import torch

CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def sync(device=None) -> None:
    """Wait for queued GPU work on `device` (all CUDA work if None and CUDA is there); no-op on CPU."""
    if device is None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed_call(fn: Callable[[], object], device=None, clock: str = "wall") -> tuple[float, object]:
    """(seconds, fn's result) for one synchronised call; clock 'cpu' counts this thread's CPU time only."""
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; valid: {', '.join(CLOCKS)}")
    now = CLOCKS[clock]
    sync(device)
    start = now()
    result = fn()
    sync(device)
    return now() - start, result


def interleaved_times(
    fns: dict, repeats: int = 5, warmup: int = 1, device=None, clock: str = "wall"
) -> dict[object, list[float]]:
    """{name: [seconds per repeat]}: warm-up rounds, then rounds A B C, C B A, ... so drift hits all alike."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats}, warmup={warmup}; valid: repeats >= 1, warmup >= 0")
    order = list(fns.items())
    for _ in range(warmup):
        for _, fn in order:
            fn()
    times: dict[object, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats):
        for name, fn in order if round_ % 2 == 0 else order[::-1]:  # no one always goes first
            times[name].append(timed_call(fn, device, clock)[0])
    return times


def time_interleaved(fns: dict, repeats: int = 5, warmup: int = 1, device=None) -> dict[object, float]:
    """{name: median seconds per call}, timed with `interleaved_times`."""
    return {name: statistics.median(ts) for name, ts in interleaved_times(fns, repeats, warmup, device).items()}


def spread(times: list[float]) -> float:
    """(max - min) / median of repeated timings: the run-to-run spread an assert's margin must exceed."""
    return (max(times) - min(times)) / statistics.median(times)


class PeakMemory:
    """Peak memory while the block runs: CUDA allocator peak, or sampled process RSS above the start on CPU."""

    def __init__(self, device):
        self.device, self.peak_bytes, self._stop = torch.device(device), 0, threading.Event()

    @staticmethod
    def rss_bytes() -> int:
        """This process's resident set size (Linux /proc; 0 where it is not available)."""
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak_bytes = max(self.peak_bytes, self.rss_bytes() - self._start)

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start = self.rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self.rss_bytes() - self._start)
        return False


def gemm_flops_per_s(device="cpu", n: int | None = None, repeats: int = 5) -> dict:
    """The device's own square-matmul rate: fp32 on CPU, bf16 on GPU -> {'n', 'dtype', 'flops_per_s'}."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen, dtype=torch.float32).to(device, dtype)
    b = torch.randn(n, n, generator=gen, dtype=torch.float32).to(device, dtype)
    seconds = statistics.median(interleaved_times({"gemm": lambda: a @ b}, repeats, warmup=2, device=device)["gemm"])
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "flops_per_s": 2 * n**3 / seconds}
