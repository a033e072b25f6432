"""run_pool: every result reaches the parent, the first failure stops the run, on_error can skip."""
import functools
import os
import time

import pytest

from breast_d2.parallel import run_pool

_TAG = None  # set by _init in the workers


def _init(tag):
    global _TAG
    _TAG = tag


def _job(item, folder, fail=(), pause=0.0):
    """Mark ``item`` as run, fail for the items in ``fail``, else return (item, pid, _TAG)."""
    if item in fail:
        raise ValueError(f"item {item} is bad")
    time.sleep(pause)  # keeps the workers busy (no assertion on time)
    open(os.path.join(folder, f"ran-{item}"), "w").close()
    return item * 10, os.getpid(), _TAG


def _ran(folder):
    return sorted(int(n[4:]) for n in os.listdir(folder) if n.startswith("ran-"))


@pytest.mark.parametrize("workers", [1, 3])
def test_every_result_reaches_the_parent(tmp_path, workers):
    got = {}
    run_pool(functools.partial(_job, folder=str(tmp_path)), range(7), workers,
             on_result=lambda item, res: got.__setitem__(item, res), progress=False)  # fmt: skip
    assert sorted(got) == list(range(7)) and all(got[i][0] == 10 * i for i in got)
    pids = {pid for _, pid, _ in got.values()}
    assert (pids == {os.getpid()}) if workers == 1 else (os.getpid() not in pids)


def test_initializer_runs_in_every_worker_only(tmp_path):
    got = []
    run_pool(functools.partial(_job, folder=str(tmp_path)), range(4), 2,
             lambda item, res: got.append(res[2]), initializer=_init, initargs=("w",),
             progress=False)  # fmt: skip
    assert got == ["w"] * 4
    got.clear()
    run_pool(functools.partial(_job, folder=str(tmp_path)), range(2), 1,
             lambda item, res: got.append(res[2]), initializer=_init, initargs=("w",),
             progress=False)  # fmt: skip
    assert got == [None, None]  # in this process: no initializer


def test_serial_run_stops_at_the_first_failure(tmp_path):
    done = []
    with pytest.raises(ValueError, match="item 2 is bad"):
        run_pool(functools.partial(_job, folder=str(tmp_path), fail=(2,)), range(6), 1,
                 lambda item, res: done.append(item), progress=False)  # fmt: skip
    assert done == [0, 1] and _ran(tmp_path) == [0, 1]


def test_pool_cancels_the_jobs_not_started(tmp_path):
    n = 200
    job = functools.partial(_job, folder=str(tmp_path), fail=(0,), pause=0.05)
    with pytest.raises(ValueError, match="item 0 is bad"):
        run_pool(job, range(n), 2, progress=False)
    # without cancelling, all 199 others would have run before the error came out
    assert len(_ran(tmp_path)) < n // 2


@pytest.mark.parametrize("workers", [1, 2])
def test_on_error_skips_or_stops(tmp_path, workers):
    done, skipped = [], []
    job = functools.partial(_job, folder=str(tmp_path), fail=(1, 3))
    run_pool(job, range(5), workers, lambda item, res: done.append(item),
             lambda item, e: skipped.append((item, str(e))), progress=False)  # fmt: skip
    assert sorted(done) == [0, 2, 4]
    assert sorted(skipped) == [(1, "item 1 is bad"), (3, "item 3 is bad")]

    def stop(item, error):
        raise RuntimeError(f"stopped at {item}")

    with pytest.raises(RuntimeError, match="stopped at 1"):
        run_pool(functools.partial(_job, folder=str(tmp_path), fail=(1,)), [1], workers,
                 on_error=stop, progress=False)  # fmt: skip


def _interrupt(item):
    raise KeyboardInterrupt


def test_keyboard_interrupt_is_never_handed_to_on_error():
    with pytest.raises(KeyboardInterrupt):
        run_pool(_interrupt, [0, 1], 1, on_error=lambda item, e: None, progress=False)
