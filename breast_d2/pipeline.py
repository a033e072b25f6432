"""Resumable multi-step jobs (the demo, cross-validation) built from the command-line tools.

Each step is one tool invocation with a file that proves it finished; a rerun skips finished
steps, so an interrupted job continues where it stopped. Tools run as subprocesses so every
step is exactly the command a user would type (each is logged).
"""
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

__all__ = ["Step", "StepFailed", "run_steps", "tool_command", "REPO_ROOT"]

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class StepFailed(RuntimeError):
    """A step's command exited non-zero."""


@dataclass
class Step:
    """One resumable step.

    Attributes:
        name: short title shown in the log.
        command: argv list.
        done: path that exists once the step has finished (checked before and after running).
    """

    name: str
    command: List[str]
    done: str


def tool_command(tool: str, *args: str) -> List[str]:
    """argv running ``tools/<tool>.py`` with this interpreter."""
    return [sys.executable, os.path.join(REPO_ROOT, "tools", f"{tool}.py"), *map(str, args)]


def run_steps(steps: Sequence[Step], log_file: Optional[str] = None) -> None:
    """Run the steps in order, skipping those whose ``done`` file exists.

    Raises:
        StepFailed: naming the step and its command when one exits non-zero or does not
            produce its ``done`` file.
    """
    for i, step in enumerate(steps, 1):
        title = f"[{i}/{len(steps)}] {step.name}"
        if os.path.exists(step.done):
            logger.info(f"{title}: done already ({step.done})")
            continue
        cmd = " ".join(shlex.quote(c) for c in step.command)
        logger.info(f"{title}\n  $ {cmd}")
        if log_file:
            with open(log_file, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {title}\n$ {cmd}\n")
        start = time.perf_counter()
        result = subprocess.run(step.command, cwd=REPO_ROOT)
        if result.returncode != 0:
            raise StepFailed(f"step '{step.name}' failed (exit {result.returncode}): {cmd}")
        if not os.path.exists(step.done):
            raise StepFailed(f"step '{step.name}' finished without writing {step.done}")
        logger.info(f"{title}: finished in {time.perf_counter() - start:.0f} s")
