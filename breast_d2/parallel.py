"""The one process pool of the library: run a function over items, fail fast, show a progress bar.

Used by the converter (one job per case) and the phantom writers (one job per synthetic case).
Results are handed to ``on_result`` in the parent process as each job finishes (completion order
with several workers, item order in one process). The first failure stops the run: jobs not yet
started are cancelled, the running ones are waited for, and the error is raised; an
``on_error`` callback may instead record a failure and let the run go on (the converter's
``skip_bad_cases``).
"""
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Optional, Sequence, Tuple

__all__ = ["pool_context", "run_pool"]

logger = logging.getLogger(__name__)


def pool_context():
    """``fork`` where available, else ``spawn``.

    A spawned worker re-imports the package (torch, detectron2: seconds per worker) although the
    jobs run here only need NumPy/SimpleITK; forked workers inherit the imported modules.
    """
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _finish(item, get_result, on_result, on_error) -> None:
    try:
        result = get_result()
    except Exception as e:  # KeyboardInterrupt/SystemExit always stop the run
        if on_error is None:
            raise
        on_error(item, e)  # records the failure, or raises to stop
        return
    if on_result is not None:
        on_result(item, result)


def run_pool(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    workers: int,
    on_result: Optional[Callable[[Any, Any], None]] = None,
    on_error: Optional[Callable[[Any, Exception], None]] = None,
    initializer: Optional[Callable[..., None]] = None,
    initargs: Tuple = (),
    desc: str = "",
    unit: str = "item",
    progress: bool = True,
    name: Optional[Callable[[Any], str]] = None,
) -> None:
    """Call ``fn(item)`` for every item, in this process or in ``workers`` processes.

    Args:
        fn: the job; with several workers it and its items must pickle (a module-level function
            or a ``functools.partial`` of one).
        items: the jobs' arguments.
        workers: processes; ``<= 1`` (or a single item) runs every job here, in item order, and
            ``initializer`` is not called.
        on_result: ``on_result(item, result)``, called in this process as each job finishes.
        on_error: ``on_error(item, exception)`` for a job that raised an ``Exception``: it may
            record the failure (the run goes on) or raise (the run stops). Without it, the first
            failure stops the run and is raised.
        initializer, initargs: run once in every worker process before its first job.
        desc, unit: progress bar text.
        progress: show a tqdm progress bar (stderr).
        name: ``name(item)`` is shown beside the bar (the item being run, in one process).

    Raises:
        The first exception of a job (or of ``on_result``/``on_error``); jobs not yet started are
        cancelled and the running ones finish before it is raised.
    """
    from tqdm import tqdm

    items = list(items)
    bar = tqdm(total=len(items), desc=desc, unit=unit, dynamic_ncols=True, disable=not progress)
    try:
        if workers <= 1 or len(items) <= 1:
            for item in items:
                if name is not None:
                    bar.set_postfix_str(name(item))
                _finish(item, lambda: fn(item), on_result, on_error)
                bar.update()
            return
        with ProcessPoolExecutor(min(workers, len(items)), mp_context=pool_context(),
                                 initializer=initializer, initargs=initargs) as pool:  # fmt: skip
            futures = {pool.submit(fn, item): item for item in items}
            try:
                for fut in as_completed(futures):
                    item = futures[fut]
                    if name is not None:
                        bar.set_postfix_str(name(item))
                    _finish(item, fut.result, on_result, on_error)
                    bar.update()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        bar.close()
