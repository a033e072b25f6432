"""Step chains as submitit jobs: one cluster job per fold of a cross-validation.

A fold's chain (segmentation -> fold-correct masks -> detector training -> ``--eval-only``) is the
same list of :class:`~breast_d2.jobs.Step` the local launcher runs, and it keeps the same done
markers (``<job>/.steps``), so a preempted, timed-out or resubmitted job skips what is finished and
``train_net.py --resume`` continues an interrupted training. :class:`FoldJob` is a
``submitit.helpers.Checkpointable``: on preemption or timeout submitit requeues the same chain.

Steps marked ``launch`` (tools/train_net.py) get detectron2's ``launch`` arguments: ``--num-gpus``
over the job's GPUs and, for a multi-node job, ``--num-machines/--machine-rank/--dist-url`` as
detectron2 documents them. A job runs one task per node; node 0 runs every step and writes the
markers, the other nodes wait for node 0's markers of the single-process steps and join the
``launch`` steps.

submitit writes its own pickles (the job and its result) next to the logs, in the folder given to
:func:`make_executor`; only files this module wrote there are ever loaded.
"""
import logging
import os
import re
import shlex
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import submitit
from submitit.core.utils import FailedJobError

from .cli import setup_tool_logging
from .jobs import Step, StepFailed, is_step_done, run_steps

__all__ = [
    "CLUSTERS",
    "ClusterOptions",
    "FoldJob",
    "FoldJobFailed",
    "launch_args",
    "with_launch_args",
    "run_node_steps",
    "parse_slurm_args",
    "log_folder",
    "make_executor",
    "run_fold_jobs",
]

logger = logging.getLogger(__name__)

# submitit executors: "slurm" on a cluster; "local" runs the same jobs as processes on this
# machine (submitit's LocalExecutor), to test the cluster path without a cluster.
CLUSTERS = ("slurm", "local")

# sbatch options that cross_validate sets itself: the flag to use instead, or None (never set).
_RESERVED_SLURM = {
    "partition": "--partition",
    "time": "--timeout",
    "nodes": "--nodes",
    "gpus_per_node": "--gpus-per-fold",
    "ntasks_per_node": None,
    "output": None,
    "error": None,
    "signal": None,
    "open_mode": None,
    "job_name": None,
    "array": None,
}


class FoldJobFailed(StepFailed):
    """A fold's cluster job failed; the message names the fold, the job id and its log."""


@dataclass
class ClusterOptions:
    """Resources of one fold job.

    Attributes:
        cluster: a name from :data:`CLUSTERS`.
        partition: SLURM partition (None: the cluster's default).
        gpus_per_fold: GPUs per node, one detectron2 process each.
        nodes: nodes per fold job (detectron2 ``--num-machines``).
        timeout_min: time limit of one run of the job, minutes (a job that reaches it is requeued
            by submitit and continues where it stopped).
        cpus_per_gpu: CPU cores per GPU (data loading); the job's task gets ``cpus_per_gpu x
            gpus_per_fold``.
        slurm_args: more sbatch options, ``{"account": "abc", "qos": "high"}`` (see
            :func:`parse_slurm_args`).
        poll_s: seconds between two checks of the jobs' states while waiting.
    """

    cluster: str = "slurm"
    partition: Optional[str] = None
    gpus_per_fold: int = 1
    nodes: int = 1
    timeout_min: int = 1440
    cpus_per_gpu: int = 8
    slurm_args: Dict[str, Any] = field(default_factory=dict)
    poll_s: float = 30.0


def parse_slurm_args(text: str) -> Dict[str, Any]:
    """``"--account=abc --qos high --exclusive"`` -> ``{"account": "abc", "qos": "high",
    "exclusive": True}`` (sbatch long options; ``-`` in names becomes ``_`` as submitit spells
    them, so an option given here replaces submitit's default of the same name).

    Raises:
        ValueError: a token that is not a long option, or an option cross_validate sets itself.
    """
    tokens = shlex.split(text)
    params: Dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) < 3:
            raise ValueError(f"--slurm-args: expected sbatch long options (--name=value), got "
                             f"{token!r}")
        name, eq, value = token[2:].partition("=")
        if not eq and i + 1 < len(tokens) and not tokens[i + 1].startswith("-"):
            value, i = tokens[i + 1], i + 1
        key = name.replace("-", "_")
        if key in _RESERVED_SLURM:
            instead = _RESERVED_SLURM[key]
            hint = f"use {instead}" if instead else "cross_validate sets it"
            raise ValueError(f"--slurm-args: --{name} is not allowed here ({hint})")
        params[key] = value if (eq or value) else True
        i += 1
    return params


def log_folder(job_dir: str) -> str:
    """Where fold jobs' logs and submitit's files go: ``<job>/logs/slurm``."""
    return os.path.join(job_dir, "logs", "slurm")


def make_executor(folder: str, options: ClusterOptions) -> submitit.AutoExecutor:
    """A submitit executor for fold jobs: one task per node, logs (stdout and stderr together)
    and submitit's files in ``folder``.

    Raises:
        ValueError: an unknown cluster, ``slurm`` where ``sbatch``/``srun`` are not on the PATH,
            or resources submitit refuses.
    """
    if options.cluster not in CLUSTERS:
        raise ValueError(f"unknown cluster {options.cluster!r} (expected one of {CLUSTERS})")
    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
    if options.cluster == "slurm" and missing:
        raise ValueError(f"--launcher slurm: {missing[0]} is not on the PATH (run this on the "
                         "cluster's login node)")
    executor = submitit.AutoExecutor(folder=folder, cluster=options.cluster)
    executor.update_parameters(
        timeout_min=options.timeout_min,
        nodes=options.nodes,
        tasks_per_node=1,  # detectron2's launch starts one process per GPU itself
        gpus_per_node=options.gpus_per_fold,
        cpus_per_task=options.cpus_per_gpu * options.gpus_per_fold,
        stderr_to_stdout=True,  # one log per fold job, in the order things happened
        slurm_partition=options.partition,
        # A failed node ends the job instead of leaving the others waiting for it.
        slurm_srun_args=["--kill-on-bad-exit=1"],
        slurm_additional_parameters=dict(options.slurm_args),
    )
    return executor


def _dist_port(job_id: str) -> int:
    """A TCP port for the job's process group, from its id: two multi-node jobs that share a
    first node get different ports (one job's nodes agree on it without talking)."""
    digits = re.sub(r"\D", "", job_id) or "0"
    return 20000 + int(digits) % 20000


def launch_args(gpus: int, num_machines: int, machine_rank: int, first_host: str,
                job_id: str) -> List[str]:
    """detectron2 ``launch`` arguments of one node of a job (default_argument_parser's flags).

    One node: ``--dist-url auto`` (detectron2 picks a free local port, so two fold jobs on one
    node do not collide); several: ``tcp://<first node>:<port from the job id>``.
    """
    if num_machines > 1:
        dist_url = f"tcp://{first_host}:{_dist_port(job_id)}"
    else:
        dist_url = "auto"
    return ["--num-gpus", str(gpus), "--num-machines", str(num_machines),
            "--machine-rank", str(machine_rank), "--dist-url", dist_url]


def with_launch_args(step: Step, args: Sequence[str]) -> Step:
    """``step`` with ``args`` right after its script path (``tool_command`` argv: interpreter,
    script, flags..., config overrides), so they come before the KEY VALUE overrides."""
    return Step(step.name, [*step.command[:2], *args, *step.command[2:]], launch=step.launch)


def run_node_steps(steps: Sequence[Step], job_dir: str, launch: Sequence[str], node: int = 0,
                   poll_s: float = 10.0) -> None:
    """Run one node's share of a fold chain.

    Node 0 runs every step (markers as :func:`~breast_d2.jobs.run_steps`); another node runs
    only the ``launch`` steps (joining node 0's processes) and waits for node 0's markers of the
    others (the job folder is on a filesystem all nodes share, as SLURM clusters have).

    Args:
        steps: the fold's chain, in order.
        job_dir: the job folder (markers in ``.steps/``).
        launch: :func:`launch_args` of this node, added to the ``launch`` steps.
        node: this node's index in the job.
        poll_s: seconds between two looks for node 0's markers.
    """
    steps = [with_launch_args(s, launch) if s.launch else s for s in steps]
    if node == 0:
        run_steps(steps, job_dir)
        return
    for step in steps:
        if is_step_done(job_dir, step):
            logger.info(f"node {node}: {step.name}: done already")
        elif step.launch:
            run_steps([step], job_dir)
        else:
            logger.info(f"node {node}: waiting for node 0 to finish '{step.name}'")
            while not is_step_done(job_dir, step):
                time.sleep(poll_s)


class FoldJob(submitit.helpers.Checkpointable):
    """One fold's chain as a submitit job; requeued as it is on preemption or timeout.

    The chain is built when the job starts (``build_steps()``), not when it is submitted, so
    steps whose flags depend on files (``--resume`` of a segmentation training) see the files of
    the current run.
    """

    def __init__(self, fold: int, build_steps: Callable[[], Sequence[Step]], job_dir: str,
                 gpus: int):
        self.fold = fold
        self.build_steps = build_steps
        self.job_dir = job_dir
        self.gpus = gpus

    def __call__(self) -> int:
        setup_tool_logging(logging.INFO)  # the job's log: OUT/logs/slurm/<job id>_0_log.out
        env = submitit.JobEnvironment()
        logger.info(f"fold {self.fold}: {env}")
        launch = launch_args(self.gpus, env.num_nodes, env.node, env.hostnames[0], env.job_id)
        run_node_steps(list(self.build_steps()), self.job_dir, launch, env.node)
        return self.fold


def _failure_reason(error: Exception) -> str:
    """One line from submitit's job error: the exception line of the job's traceback."""
    text = str(error)
    if isinstance(error, FailedJobError):
        trace = text.split("----------------------\n")
        lines = [ln.strip() for ln in (trace[1] if len(trace) > 2 else text).splitlines()]
        last = [ln for ln in lines if ln][-1:] or ["failed"]
        return re.sub(r"^[\w.]*StepFailed: ", "", last[0])
    return "ended without a result (cancelled, killed or out of time; see the log)"


def _describe(job: submitit.Job, cluster: str) -> str:
    kind = "SLURM job" if cluster == "slurm" else f"{cluster} submitit job"
    return f"{kind} {job.job_id}, log {job.paths.stdout}"


def run_fold_jobs(chains: Mapping[int, Callable[[], Sequence[Step]]], job_dir: str,
                  options: ClusterOptions, executor: Optional[submitit.Executor] = None) -> None:
    """Submit one job per fold whose chain is not finished, and wait for all of them.

    Args:
        chains: fold -> function building the fold's steps (called here to see which steps are
            done, and again in the job); it must be picklable (submitit's cloudpickle).
        job_dir: the job folder (markers, and the fold logs in :func:`log_folder`).
        options: resources of a fold job.
        executor: the executor (default: :func:`make_executor` for ``options``).

    Raises:
        FoldJobFailed: after every job ended, for the first failed fold: its job id, its log and
            the job's error line (the failed step and command); the other failed folds by number.
    """
    executor = executor or make_executor(log_folder(job_dir), options)
    jobs = {}
    for fold, build in chains.items():
        if all(is_step_done(job_dir, s) for s in build()):
            logger.info(f"fold {fold}: every step is done already")
            continue
        executor.update_parameters(name=f"breast_d2_fold{fold}")
        jobs[fold] = executor.submit(FoldJob(fold, build, job_dir, options.gpus_per_fold))
        logger.info(f"fold {fold}: submitted ({_describe(jobs[fold], options.cluster)})")
    failures = []
    try:
        pending = dict(jobs)
        while pending:
            for fold, job in list(pending.items()):
                if job.done():
                    del pending[fold]
                    failures += _check_job(fold, job, options.cluster)
            if pending:
                time.sleep(options.poll_s)
    except KeyboardInterrupt:  # the jobs resume from their markers when submitted again
        for fold, job in jobs.items():
            if not job.done():
                logger.info(f"cancelling fold {fold} ({_describe(job, options.cluster)})")
                job.cancel(check=False)
        raise
    if failures:
        failures.sort()
        every = f"; failed folds: {', '.join(str(f) for f, _ in failures)}"
        raise FoldJobFailed(failures[0][1] + (every if len(failures) > 1 else ""))


def _check_job(fold: int, job: submitit.Job, cluster: str) -> List[tuple]:
    """``[]`` for a job that succeeded; ``[(fold, message)]`` (also logged) for one that failed."""
    error = job.exception()
    if error is None:
        logger.info(f"fold {fold}: finished ({_describe(job, cluster)})")
        return []
    message = f"fold {fold} failed ({_describe(job, cluster)}): {_failure_reason(error)}"
    logger.error(message)
    return [(fold, message)]
