"""Training feedback on the main process: a tqdm bar (loss, images/s) and dvclive's per-step loss and lr."""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from diyt.io import write_text


class StepLog:
    """Per-step loss and lr to `<log_dir>/plots/metrics/{loss,lr}.tsv` (x: step), and a progress bar.

    A resumed run first drops the rows logged after its checkpoint, so each step appears once.
    """

    def __init__(self, log_dir: Path | None, *, start: int, total: int, batch_size: int, desc: str):
        self.live = None
        if log_dir is not None:
            from dvclive import Live  # imports dvc: only where a log is asked for

            if start:
                _drop_rows_from(Path(log_dir) / "plots" / "metrics", start)
            self.live = Live(dir=str(log_dir), resume=bool(start), save_dvc_exp=False, dvcyaml=None)
            self.live.step = start
        self.bar = tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True)
        self.start, self.batch_size = start, batch_size
        self.began = self.last = time.perf_counter()
        self.done = start

    @property
    def images_per_s(self) -> float:
        """Over the steps logged so far, checkpoint writes between them included."""
        return (self.done - self.start) * self.batch_size / max(self.last - self.began, 1e-9)

    def step(self, step: int, loss: float, lr: float) -> None:
        """Record iteration `step` (0-based), just done."""
        if self.live is not None:
            self.live.log_metric("loss", loss)
            self.live.log_metric("lr", lr)
            self.live.next_step()
        self.done, self.last = step + 1, time.perf_counter()
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{self.images_per_s:.1f}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
        if self.live is not None:
            self.live.end()


def _drop_rows_from(metrics_dir: Path, step: int) -> None:
    """Keep only the rows of steps before `step` in every dvclive .tsv history."""
    for tsv in metrics_dir.rglob("*.tsv"):
        header, *rows = tsv.read_text().splitlines() or [""]
        kept = [r for r in rows if int(r.split("\t", 1)[0]) < step]
        write_text(tsv, "\n".join([header, *kept]) + "\n")
