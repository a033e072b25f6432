"""Resumable multi-step jobs (the demo, cross-validation) built from the command-line tools.

Each step is one tool invocation; when it exits 0 a marker ``<job>/.steps/<slug>.done`` is
written, and a rerun skips marked steps, so an interrupted job continues where it stopped (the
tools themselves resume inside a step: ``--resume`` for training). Tools run as subprocesses so
every step is exactly the command a user would type; each command is logged.
"""
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Sequence

__all__ = [
    "REPO_ROOT",
    "Step",
    "StepFailed",
    "run_steps",
    "tool_command",
    "segmentation_steps",
    "detection_steps",
    "fold_froc_dir",
    "run_job_cli",
]

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class StepFailed(RuntimeError):
    """A step's command exited non-zero."""


@dataclass
class Step:
    """One resumable step: a title and the argv that performs it."""

    name: str
    command: List[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name).strip("_")


def tool_command(tool: str, *args) -> List[str]:
    """argv running ``tools/<tool>.py`` with this interpreter."""
    return [sys.executable, os.path.join(REPO_ROOT, "tools", f"{tool}.py"), *map(str, args)]


def run_steps(steps: Sequence[Step], job_dir: str) -> None:
    """Run the steps in order, skipping those already marked done in ``job_dir/.steps``.

    Raises:
        StepFailed: naming the step and its command when one exits non-zero.
    """
    marks = os.path.join(job_dir, ".steps")
    os.makedirs(marks, exist_ok=True)
    for i, step in enumerate(steps, 1):
        title = f"[{i}/{len(steps)}] {step.name}"
        marker = os.path.join(marks, step.slug + ".done")
        if os.path.exists(marker):
            logger.info(f"{title}: done already")
            continue
        cmd = " ".join(shlex.quote(c) for c in step.command)
        logger.info(f"{title}\n  $ {cmd}")
        with open(os.path.join(job_dir, "commands.log"), "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {title}\n$ {cmd}\n")
        start = time.perf_counter()
        result = subprocess.run(step.command, cwd=REPO_ROOT)
        if result.returncode != 0:
            raise StepFailed(f"step '{step.name}' failed (exit {result.returncode}): {cmd}")
        elapsed = time.perf_counter() - start
        with open(marker, "w") as f:
            f.write(f"{elapsed:.1f}\n")
        logger.info(f"{title}: finished in {elapsed:.0f} s")


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
        Step(f"train {label} fold{fold}", tool_command("train_net", *base, "--resume", *common)),
        Step(
            f"evaluate {label} fold{fold}",
            tool_command("train_net", *base, "--eval-only", *common, "MODEL.WEIGHTS", weights),
        ),
    ]


def run_job_cli(main: Callable[[], None]) -> None:
    """Entry point of a job tool: INFO logging; a failed step exits 1 with a one-line error."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        main()
    except StepFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
