"""Small helpers for the benchmark scripts: peak-RSS sampling and table printing."""
from __future__ import annotations

import os
import threading
import time

import psutil


class PeakMemory:
    """Peak resident memory (CPU) or peak allocated CUDA memory above the level at entry, in MiB."""

    def __init__(self, device: str = "cpu"):
        self.device = device

    def __enter__(self):
        import torch

        self.process = psutil.Process(os.getpid())
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = self.process.memory_info().rss
            self._stop = False
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def _watch(self):
        while not self._stop:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self._stop = True
            self._thread.join()
            self.mib = (max(self.peak, self.process.memory_info().rss) - self.base) / 2**20
        return False


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[str(h) for h in headers]] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(cells[0], widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
