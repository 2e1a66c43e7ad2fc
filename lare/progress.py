"""Live progress of long jobs that a person can read above Ray's own log lines.

Workers (rank 0 of a training run, an evaluation's inference actors) post their state to one small Ray actor, the
board; the driver polls it and draws one tqdm bar per run (step of total, stage, loss, samples/s, ETA). Nothing
goes through Ray's log forwarding, so the bars stay readable when that is quiet (the jobs' default) and work the
same on a cluster, where the driver is not on the workers' machine.
"""

from __future__ import annotations

import sys
import threading

BOARD_NAME = "lare-progress"


class _Board:
    """{run: its latest state}. A state: total, done (steps), and any short fields shown beside the bar."""

    def __init__(self):
        self.states: dict[str, dict] = {}

    def post(self, run: str, state: dict) -> None:
        self.states[run] = state

    def snapshot(self) -> dict[str, dict]:
        return self.states


def post(board, run: str, **state) -> None:
    """A worker's update (fire and forget: progress must never slow or break the work). board None: no-op."""
    if board is not None:
        board.post.remote(run, state)


class LiveProgress:
    """Driver side: `with LiveProgress() as board:` hand `board` to the workers; bars are drawn until the block ends."""

    def __init__(self, enabled: bool = True, interval_s: float = 1.0, stream=None):
        self.enabled, self.interval_s, self.stream = enabled, interval_s, stream or sys.stderr
        self.board, self.bars, self._stop = None, {}, threading.Event()
        self._thread = None

    def __enter__(self):
        if not self.enabled:
            return None
        import ray

        self.board = ray.remote(num_cpus=0)(_Board).options(name=f"{BOARD_NAME}-{id(self)}").remote()
        self._thread = threading.Thread(target=self._draw_until_stopped, daemon=True)
        self._thread.start()
        return self.board

    def __exit__(self, *exc) -> None:
        if self.board is None:
            return
        self._stop.set()
        self._thread.join(timeout=10)
        self._draw()  # the final state
        for bar in self.bars.values():
            bar.close()
        import ray

        ray.kill(self.board)

    def _draw_until_stopped(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._draw()
            except Exception:  # the board is gone (Ray shutting down): nothing more to show
                return

    def _draw(self) -> None:
        import ray
        from tqdm import tqdm

        states = ray.get(self.board.snapshot.remote(), timeout=10)
        for run, state in sorted(states.items()):
            bar = self.bars.get(run)
            if bar is None:
                bar = self.bars[run] = tqdm(total=state.get("total"), desc=run, unit="step", file=self.stream,
                                            position=len(self.bars), leave=True, dynamic_ncols=True)
            if state.get("total") != bar.total:
                bar.total = state.get("total")
            bar.n = state.get("done", 0)
            bar.set_postfix({k: _short(v) for k, v in state.items() if k not in ("total", "done")}, refresh=False)
            bar.refresh()


def _short(value):
    return f"{value:.4g}" if isinstance(value, float) else value

