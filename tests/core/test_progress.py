"""Live progress: what a worker posts to the board is what the driver's bar shows."""

import io
import time

import pytest

from lare.progress import LiveProgress, post


@pytest.mark.slow
def test_a_worker_posts_and_the_driver_draws_it(ray_session):
    import ray

    @ray.remote(num_cpus=0)
    def worker(board):
        for step in range(1, 4):
            post(board, "run-a", total=3, done=step, stage=2, loss=0.5 / step)
        return True

    stream = io.StringIO()
    with LiveProgress(interval_s=0.05, stream=stream) as board:
        assert ray.get(worker.remote(board))
        # A worker's posts and the driver's reads are calls from two callers: no order between them is promised.
        deadline = time.monotonic() + 30
        while ray.get(board.snapshot.remote()).get("run-a", {}).get("done") != 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    text = stream.getvalue()
    assert "run-a" in text and "3/3" in text and "stage=2" in text and "loss=0.1667" in text


def test_progress_off_and_no_board_are_no_ops():
    with LiveProgress(enabled=False) as board:
        assert board is None
        post(board, "run", total=1, done=1)  # nothing to post to: no error
