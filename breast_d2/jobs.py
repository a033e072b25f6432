"""Resumable multi-step jobs (the demo, cross-validation) built from the command-line tools.

Each step is one tool invocation; when it exits 0 a marker ``<job>/.steps/<slug>.done`` is
written, and a rerun skips marked steps, so an interrupted job continues where it stopped (the
tools themselves resume inside a step: ``--resume`` for training). Tools run as subprocesses so
every step is exactly the command a user would type; each command is logged. They run in the
caller's working directory, so a relative path means the same to the job tool, its markers and
every step.

Independent steps can run side by side (:class:`Parallel`): on a small CPU two trainings with one
thread each finish sooner than the same two run one after the other with two threads each
(small convolutions do not scale to two threads; BENCHMARKS.md, "make demo").
"""
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Union

__all__ = [
    "REPO_ROOT",
    "Step",
    "Parallel",
    "StepFailed",
    "is_step_done",
    "run_steps",
    "tool_command",
    "segmentation_dir",
    "segmentation_steps",
    "detection_steps",
    "explain_step",
    "fold_froc_dir",
    "run_job_cli",
]

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class StepFailed(RuntimeError):
    """A step's command exited non-zero."""


@dataclass
class Step:
    """One resumable step: a title and the argv that performs it.

    ``launch`` marks a detectron2 tool started through ``launch`` (tools/train_net.py): a cluster
    launcher (:mod:`breast_d2.launchers`) adds ``--num-gpus/--num-machines/--machine-rank/
    --dist-url`` after the script path and runs it on every node of the job.
    """

    name: str
    command: List[str] = field(default_factory=list)
    launch: bool = False

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name).strip("_")


def tool_command(tool: str, *args) -> List[str]:
    """argv running ``tools/<tool>.py`` with this interpreter."""
    return [sys.executable, os.path.join(REPO_ROOT, "tools", f"{tool}.py"), *map(str, args)]


@dataclass
class Parallel:
    """Lanes of steps that run at the same time; the steps of one lane run in order.

    Each lane's commands get ``threads`` OpenMP/MKL threads and write their output to
    ``<job>/logs/<step slug>.log``; while they run, the last line of every running lane's log is
    logged every ``status_every`` seconds. Steps are marked done one by one as usual, so an
    interrupted group resumes with what is left of each lane.
    """

    lanes: List[List[Step]]
    threads: int = 1
    status_every: float = 30.0


def _count_steps(items: Sequence[Union[Step, Parallel]]) -> int:
    return sum(sum(map(len, it.lanes)) if isinstance(it, Parallel) else 1 for it in items)


class _StepRunner:
    """Runs steps as subprocesses, writes the done markers and the commands log."""

    def __init__(self, job_dir: str, total: int):
        self.job_dir = job_dir
        self.marks = os.path.join(job_dir, ".steps")
        self.total = total
        self.index = 0
        os.makedirs(self.marks, exist_ok=True)

    def title(self, step: Step) -> str:
        self.index += 1
        return f"[{self.index}/{self.total}] {step.name}"

    def is_done(self, step: Step) -> bool:
        return is_step_done(self.job_dir, step)

    def start(self, step: Step, title: str, env: Optional[Dict[str, str]] = None,
              log_path: Optional[str] = None) -> subprocess.Popen:
        cmd = shlex.join(step.command)
        where = f"\n  (output: {log_path})" if log_path else ""
        logger.info(f"{title}\n  $ {cmd}{where}")
        with open(os.path.join(self.job_dir, "commands.log"), "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {title}\n$ {cmd}\n")
        if log_path is None:
            return subprocess.Popen(step.command, env=env)
        with open(log_path, "ab") as log:
            return subprocess.Popen(step.command, env=env, stdout=log, stderr=subprocess.STDOUT)

    def finish(self, step: Step, title: str, returncode: int, elapsed: float,
               log_path: Optional[str] = None) -> None:
        if returncode != 0:
            cmd = shlex.join(step.command)
            see = f" (output: {log_path})" if log_path else ""
            raise StepFailed(f"step '{step.name}' failed (exit {returncode}){see}: {cmd}")
        with open(os.path.join(self.marks, step.slug + ".done"), "w") as f:
            f.write(f"{elapsed:.1f}\n")
        logger.info(f"{title}: finished in {elapsed:.0f} s")

    def run(self, step: Step) -> None:
        title = self.title(step)
        if self.is_done(step):
            logger.info(f"{title}: done already")
            return
        start = time.perf_counter()
        proc = self.start(step, title)
        try:
            returncode = proc.wait()
        finally:  # Ctrl-C, or a cluster job's preemption handler exiting: stop the step too
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
        self.finish(step, title, returncode, time.perf_counter() - start)

    def run_parallel(self, group: Parallel) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(group.threads),
                   MKL_NUM_THREADS=str(group.threads))
        logs = os.path.join(self.job_dir, "logs")
        os.makedirs(logs, exist_ok=True)
        todo = []
        for lane in group.lanes:
            pending = []
            for step in lane:
                title = self.title(step)
                if self.is_done(step):
                    logger.info(f"{title}: done already")
                else:
                    pending.append((step, title))
            todo.append(pending)
        running = {}  # lane index -> (step, title, process, start time, log path)
        last_status = time.perf_counter()
        try:
            while any(todo) or running:
                for lane, pending in enumerate(todo):
                    if lane not in running and pending:
                        step, title = pending.pop(0)
                        log_path = os.path.join(logs, step.slug + ".log")
                        proc = self.start(step, title, env, log_path)
                        running[lane] = (step, title, proc, time.perf_counter(), log_path)
                for lane, (step, title, proc, start, log_path) in list(running.items()):
                    if proc.poll() is not None:
                        del running[lane]
                        self.finish(step, title, proc.returncode, time.perf_counter() - start,
                                    log_path)
                if running and time.perf_counter() - last_status >= group.status_every:
                    last_status = time.perf_counter()
                    for step, _, _, start, log_path in running.values():
                        logger.info(f"  {step.name} ({time.perf_counter() - start:.0f} s): "
                                    f"{_last_line(log_path)}")
                time.sleep(0.2)
        finally:  # a failed lane or Ctrl-C: stop the others (they resume on the next run)
            for _, _, proc, _, _ in running.values():
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()


def _last_line(path: str, width: int = 140) -> str:
    """Last non-empty line of a log (tqdm's carriage-return updates count as lines)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", tail) if ln.strip()]
    return lines[-1][:width] if lines else ""


def is_step_done(job_dir: str, step: Step) -> bool:
    """Whether ``step`` has its done marker in ``job_dir/.steps`` (it exited 0 before)."""
    return os.path.exists(os.path.join(job_dir, ".steps", step.slug + ".done"))


def run_steps(steps: Sequence[Union[Step, Parallel]], job_dir: str) -> None:
    """Run the steps in order, skipping those already marked done in ``job_dir/.steps``.

    Args:
        steps: :class:`Step` (runs in the foreground) or :class:`Parallel` (lanes side by side).
        job_dir: the job folder (``.steps/`` markers, ``commands.log``, ``logs/``).

    Raises:
        StepFailed: naming the step and its command when one exits non-zero.
    """
    runner = _StepRunner(job_dir, _count_steps(steps))
    for item in steps:
        if isinstance(item, Parallel):
            runner.run_parallel(item)
        else:
            runner.run(item)


def segmentation_dir(job_dir: str, arch: str, fold: int) -> str:
    """Where a job keeps fold ``fold``'s ``arch`` segmentation model (cross_validate.py and the
    segmentation benchmark share it, so one reuses the other's models)."""
    return os.path.join(job_dir, "segmentation", f"{arch}_fold{fold}")


def segmentation_steps(
    data: str, fold: int, seg_dir: str, arch: str = "unetplusplus", seg_args: Sequence[str] = ()
) -> List[Step]:
    """Train a breast segmentation model on fold ``fold`` (continues an interrupted run)."""
    resume = ["--resume"] if os.path.isfile(os.path.join(seg_dir, "model_last.pth")) else []
    return [
        Step(
            f"segmentation {arch} fold{fold}",
            tool_command("train_breast_seg", "--data", data, "--fold", fold, "--arch", arch,
                         "--out", seg_dir, *resume, *seg_args),
        )
    ]


def fold_froc_dir(det_dir: str, fold: int) -> str:
    """Where ``train_net.py --eval-only`` writes fold ``fold``'s FROC files."""
    return os.path.join(det_dir, f"fold{fold}", "inference", f"breast_fold{fold}_val")


def detection_steps(
    config_file: str, data: str, fold: int, det_dir: str, opts: Sequence[str] = (),
    label: str = "detector",
) -> List[Step]:
    """Train the detector on fold ``fold`` (resumable) and evaluate FROC on its validation cases."""
    base = ["--config-file", config_file, "--fold", fold, "--data", data]
    common = ["OUTPUT_DIR", det_dir, *opts]
    weights = os.path.join(det_dir, f"fold{fold}", "model_final.pth")
    return [
        # The next step evaluates: no second evaluation at the end of training.
        Step(f"train {label} fold{fold}", tool_command("train_net", *base, "--resume", *common,
                                                       "TEST.FINAL_EVAL", "False"), launch=True),
        Step(
            f"evaluate {label} fold{fold}",
            tool_command("train_net", *base, "--eval-only", *common, "MODEL.WEIGHTS", weights),
            launch=True,
        ),
    ]


def explain_step(trained_dir: str, data: str, fold: int, out_md: str, out_json: str,
                 label: str = "detector") -> Step:
    """Each validation mass of fold ``fold`` traced through ``trained_dir``'s fold model, with
    the config it was trained with (tools/explain_misses.py: found, box off, or lost at the box
    head or the RPN), and joined to the 3D candidates of the fold's evaluation
    (:func:`fold_froc_dir`, so after :func:`detection_steps`): the tables to ``out_md``, one row
    per mass to ``out_json``."""
    fold_dir = os.path.join(trained_dir, f"fold{fold}")
    return Step(f"explain masses ({label}) fold{fold}", tool_command(
        "explain_misses", "--config-file", os.path.join(fold_dir, "config.yaml"),
        "--weights", os.path.join(fold_dir, "model_final.pth"), "--data", data, "--fold", fold,
        "--candidates", fold_froc_dir(trained_dir, fold), "--out", out_md, "--json", out_json))


def run_job_cli(main: Callable[[], None]) -> None:
    """Entry point of a job tool: INFO logging; a failed step exits 1 with a one-line error."""
    from .cli import setup_tool_logging

    setup_tool_logging(logging.INFO)
    try:
        main()
    except StepFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
