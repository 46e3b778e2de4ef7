"""Training throughput: samples per second and the share of an epoch's time spent waiting for data."""
from __future__ import annotations

import time


class EpochClock:
    """Times the batches of one training epoch: the gaps between them (data loading) and the steps themselves."""

    def __init__(self) -> None:
        self.last_end: float | None = None
        self.start = self.wait = self.busy = 0.0
        self.samples = 0

    def batch_start(self) -> None:
        now = time.perf_counter()
        if self.last_end is not None:
            self.wait += now - self.last_end  # time spent fetching this batch
        self.start = now

    def batch_end(self, samples: int) -> None:
        now = time.perf_counter()
        self.busy += now - self.start
        self.samples += samples
        self.last_end = now

    def rates(self) -> dict[str, float]:
        """``{"train/samples_per_s", "train/data_wait_fraction"}`` of the epoch so far (empty before a batch)."""
        total = self.wait + self.busy
        if total <= 0:
            return {}
        return {"train/samples_per_s": self.samples / total, "train/data_wait_fraction": self.wait / total}
