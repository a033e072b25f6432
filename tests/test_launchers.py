"""Fold chains as submitit jobs (breast_d2.launchers, tools/cross_validate.py --launcher): the
sbatch file of a fold job, detectron2's launch arguments per node, failures naming the job and
its log, resubmission and preemption skipping finished steps, and a 2-fold tiny cross-validation
through submitit's LocalExecutor giving the local launcher's numbers."""
import functools
import glob
import json
import os
import re
import signal
import stat
import sys
import threading

import pytest

from breast_d2.launchers import (
    ClusterOptions,
    FoldJob,
    FoldJobFailed,
    launch_args,
    log_folder,
    make_executor,
    parse_slurm_args,
    run_fold_jobs,
    run_node_steps,
    with_launch_args,
)
from breast_d2.jobs import Step, is_step_done
from helpers import QUICK, load_tool


def _script(path, code):
    """A Python script file (steps whose argv gets launch arguments need a script path)."""
    path.write_text(code)
    return [sys.executable, str(path)]


def _local(**kwargs):
    return ClusterOptions(cluster="local", timeout_min=20, poll_s=0.2, **kwargs)


def test_parse_slurm_args():
    assert parse_slurm_args("--account=abc --qos high --exclusive --cpus-per-task=16") == {
        "account": "abc", "qos": "high", "exclusive": True, "cpus_per_task": "16"}
    assert parse_slurm_args("") == {}
    with pytest.raises(ValueError, match="use --timeout"):
        parse_slurm_args("--time=60")
    with pytest.raises(ValueError, match="cross_validate sets it"):
        parse_slurm_args("--output=x.log")
    with pytest.raises(ValueError, match="long options"):
        parse_slurm_args("-A abc")


def test_launch_args_per_node_and_their_place_in_the_command():
    assert launch_args(2, 1, 0, "n1", "77") == [
        "--num-gpus", "2", "--num-machines", "1", "--machine-rank", "0", "--dist-url", "auto"]
    two_nodes = [launch_args(4, 2, rank, "gpu-a17", "123456") for rank in (0, 1)]
    assert two_nodes[0][-1] == two_nodes[1][-1] == "tcp://gpu-a17:23456"
    assert two_nodes[1][5] == "1"
    step = Step("train", ["python", "tools/train_net.py", "--fold", "0", "OUTPUT_DIR", "o"],
                launch=True)
    assert with_launch_args(step, ["--num-gpus", "4"]).command == [
        "python", "tools/train_net.py", "--num-gpus", "4", "--fold", "0", "OUTPUT_DIR", "o"]


def test_slurm_job_file_has_the_fold_resources(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sbatch", "srun"):  # fake SLURM: keep the batch file, answer a job id
        (bin_dir / tool).write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/batch.sh\n"
                                    "echo Submitted batch job 4242\n")
        (bin_dir / tool).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    options = ClusterOptions(partition="gpu", gpus_per_fold=4, nodes=2, timeout_min=90,
                             slurm_args=parse_slurm_args("--account=abc --cpus-per-task=16"))
    executor = make_executor(log_folder(str(tmp_path)), options)
    job = executor.submit(FoldJob(0, functools.partial(list, []), str(tmp_path), 4))
    assert job.job_id == "4242"
    assert str(job.paths.stdout) == str(tmp_path / "logs" / "slurm" / "4242_0_log.out")
    batch = (tmp_path / "batch.sh").read_text()
    for line in ("--partition=gpu", "--gpus-per-node=4", "--nodes=2", "--ntasks-per-node=1",
                 "--time=90", "--account=abc", "--signal=USR2@90"):
        assert f"#SBATCH {line}\n" in batch
    assert re.findall(r"--cpus-per-task=\d+", batch) == ["--cpus-per-task=16"]  # user's wins
    assert "srun --unbuffered" in batch and "--kill-on-bad-exit=1" in batch


def test_other_nodes_join_launch_steps_and_wait_for_node0(tmp_path):
    ran = tmp_path / "ran.txt"
    record = f"import sys; open({str(ran)!r}, 'a').write(' '.join(sys.argv[1:]) + ';')"
    prep = Step("prep", [sys.executable, "-c", record.replace("sys.argv[1:]", "['prep']")])
    train = Step("train", _script(tmp_path / "train.py", record), launch=True)
    # node 0 finishes "prep" a little later: node 1 must wait for its marker, not run it
    marker = tmp_path / ".steps" / "prep.done"
    marker.parent.mkdir()
    writer = threading.Timer(0.5, marker.write_text, ("1.0\n",))
    writer.start()
    run_node_steps([prep, train], str(tmp_path), launch_args(2, 2, 1, "n0", "9"), node=1,
                   poll_s=0.05)
    writer.join()
    assert ran.read_text() == ("--num-gpus 2 --num-machines 2 --machine-rank 1 "
                               "--dist-url tcp://n0:20009;")
    run_node_steps([prep, train], str(tmp_path), [], node=1)  # both marked done now
    assert ran.read_text().count(";") == 1


def test_failed_fold_names_job_and_log_and_resubmission_skips_finished_steps(tmp_path):
    job_dir, flag = tmp_path / "job", tmp_path / "flag"
    ran = tmp_path / "ran.txt"
    first = Step("first", [sys.executable, "-c", f"open({str(ran)!r}, 'a').write('first;')"])
    second = Step("second", _script(tmp_path / "second.py", (
        "import os, sys\n"
        f"open({str(ran)!r}, 'a').write(' '.join(sys.argv[1:3]) + ';')\n"
        f"if not os.path.exists({str(flag)!r}):\n"
        "    sys.exit('second needs the flag')\n")), launch=True)
    chains = {0: functools.partial(list, [first, second])}
    with pytest.raises(FoldJobFailed) as failed:
        run_fold_jobs(chains, str(job_dir), _local())
    message = str(failed.value)
    found = re.match(r"fold 0 failed \(local submitit job (\d+), log (\S+)\): step 'second' "
                     r"failed \(exit 1\)", message)
    assert found and "\n" not in message, message
    job_id, log = found.groups()
    assert log == str(job_dir / "logs" / "slurm" / f"{job_id}_0_log.out")
    with open(log) as f:
        assert "second needs the flag" in f.read()  # the step's output is in the fold log
    assert is_step_done(str(job_dir), first) and not is_step_done(str(job_dir), second)

    flag.write_text("")
    run_fold_jobs(chains, str(job_dir), _local())  # resubmitted: "first" does not run again
    assert ran.read_text() == "first;--num-gpus 1;--num-gpus 1;"
    logs = glob.glob(str(job_dir / "logs" / "slurm" / "*_log.out"))
    run_fold_jobs(chains, str(job_dir), _local())  # all done: nothing is submitted
    assert glob.glob(str(job_dir / "logs" / "slurm" / "*_log.out")) == logs


def test_preempted_fold_job_is_requeued_and_skips_finished_steps(tmp_path):
    ran, flag = tmp_path / "ran.txt", tmp_path / "preempted"
    first = Step("first", [sys.executable, "-c", f"open({str(ran)!r}, 'a').write('first;')"])
    # First run: SLURM's preemption signal reaches the job (the step's parent) while the step
    # runs; the requeued job runs the chain again and this time the step ends.
    second = Step("second", [sys.executable, "-c", (
        "import os, signal, sys, time\n"
        f"open({str(ran)!r}, 'a').write('second;')\n"
        f"if not os.path.exists({str(flag)!r}):\n"
        f"    open({str(flag)!r}, 'w').close()\n"
        f"    os.kill(os.getppid(), signal.{signal.Signals.SIGUSR2.name})\n"
        "    time.sleep(60)\n")])
    run_fold_jobs({0: functools.partial(list, [first, second])}, str(tmp_path), _local())
    assert ran.read_text() == "first;second;second;"
    (log,) = glob.glob(str(tmp_path / "logs" / "slurm" / "*_log.out"))
    with open(log) as f:
        text = f.read()
    assert "Caught signal SIGUSR2" in text and "Requeued job" in text
    assert "[1/2] first: done already" in text


def test_cluster_options_need_a_cluster_launcher(capsys):
    cv = load_tool("cross_validate")
    for argv, error in ((["--partition", "gpu"], "--partition needs --launcher slurm"),
                        (["--launcher", "slurm", "--lanes", "2"], "--lanes is for --launcher"),
                        (["--launcher", "slurm", "--nodes", "0"], "--nodes must be >= 1"),
                        (["--launcher", "slurm", "--slurm-args=--time=5"], "use --timeout")):
        with pytest.raises(SystemExit) as e:
            cv.parse_args(["--config-file", QUICK, "--data", "D", *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and error in err and err.count("\n") == 1, err


def test_slurm_without_sbatch_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM tools here
    cv = load_tool("cross_validate")
    args = cv.parse_args(["--config-file", QUICK, "--data", "D", "--out", str(tmp_path / "o"),
                          "--launcher", "slurm"])
    with pytest.raises(SystemExit) as e:
        cv.run(args)
    assert e.value.code == 2
    assert capsys.readouterr().err == ("error: --launcher slurm: sbatch is not on the PATH (run "
                                       "this on the cluster's login node)\n")


def _read_json(path, out=None):
    with open(path) as f:
        text = f.read()
    return json.loads(text.replace(out, "OUT") if out else text)


def test_submitit_fold_jobs_give_the_local_launchers_numbers(converted, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the steps and the fold jobs inherit it
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    cv = load_tool("cross_validate")
    outs = {}
    for launcher in ("local", "submitit-local"):
        outs[launcher] = str(tmp_path / launcher)
        # 2-iteration detectors find no mass: nothing for the reducer to learn from.
        argv = ["--config-file", QUICK, "--data", converted.data, "--folds", "0,1", "--masks", "gt",
                "--out", outs[launcher], "--launcher", launcher, "--no-fp-reducer"]
        if launcher != "local":  # the fold jobs run the local launcher's steps; one trace is enough
            argv += ["--timeout", "20", "--no-explain"]
        cv.run(cv.parse_args(argv))
    sub_logs = glob.glob(os.path.join(outs["submitit-local"], "logs", "slurm", "*_log.out"))
    assert len(sub_logs) == 2  # one job per fold, which trained and evaluated its fold
    for log in sub_logs:
        with open(log) as f:
            text = f.read()
        assert re.search(r"train_net.py --num-gpus 1 .* --fold \d .*TEST.FINAL_EVAL False", text)
        assert re.search(r"evaluate detector fold\d: finished", text)
    for fold in (0, 1):
        rel = os.path.join("detector", f"fold{fold}", "inference", f"breast_fold{fold}_val",
                           "froc.json")
        local, sub = (_read_json(os.path.join(outs[k], rel)) for k in outs)
        assert local == sub
        assert local["case_ids"]  # the fold's validation cases were evaluated
        verdicts = _read_json(os.path.join(outs["local"], "detector", f"fold{fold}",
                                           "verdicts.json"))
        assert verdicts["fold"] == fold and verdicts["masses"]  # the fold's masses were traced
        assert not os.path.exists(os.path.join(outs["submitit-local"], "detector", f"fold{fold}",
                                               "verdicts.json"))  # --no-explain
    # the cross-fold report, with each job folder's path replaced by OUT
    reports = [_read_json(os.path.join(out, "report", "froc_folds.json"), out)
               for out in outs.values()]
    assert reports[0] == reports[1]
    with open(os.path.join(outs["local"], "report", "mass_verdicts.md")) as f:
        assert "| pooled" in f.read()
