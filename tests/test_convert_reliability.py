"""Converter reliability (issue 11): misaligned phases, changed inputs on resume, killed runs."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np
import SimpleITK as sitk

from breast_d2.data.convert import convert_cohort
from breast_d2.data.errors import CohortError
from helpers import make_cohort, tool_env, tool_path, tree_hash

TOOL = tool_path("convert_to_coco")


def rewrite_phase(cohort, case_id, phase, origin=None, direction=None):
    path = os.path.join(cohort, "IMAGES", case_id, f"{case_id}_{phase:04d}.nii.gz")
    img = sitk.ReadImage(path)
    if origin is not None:
        img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, path)


class TestMisalignedPhases(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.cohort = os.path.join(self.tmp.name, "cohort")
        make_cohort(self.cohort)

    def tearDown(self):
        self.tmp.cleanup()

    def convert(self, out="O", **kw):
        return convert_cohort(os.path.join(self.cohort, "IMAGES"), os.path.join(self.tmp.name, out),
                              labels=os.path.join(self.cohort, "LABELS"), num_folds=2, **kw)

    def test_shifted_phase_is_refused_then_resampled_on_request(self):
        rewrite_phase(self.cohort, "PH0003", 1, origin=(157.0, 0.0, 0.0))
        with self.assertRaises(CohortError) as ctx:
            self.convert()
        msg = str(ctx.exception)
        for needle in ("case PH0003", "phase 1", "misaligned", "157", "--resample-phases"):
            self.assertIn(needle, msg)
        self.assertEqual(self.convert("O2", resample_phases=True)["cases"], 5)

    def test_flipped_axis_is_refused(self):
        rewrite_phase(self.cohort, "PH0002", 2, direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1))
        with self.assertRaisesRegex(CohortError, "case PH0002: phase 2 .* misaligned"):
            self.convert()

    def test_sub_voxel_header_rounding_is_accepted(self):
        rewrite_phase(self.cohort, "PH0002", 1, origin=(0.1, 0.0, 0.0))  # < half of 0.75 mm
        self.assertEqual(self.convert()["cases"], 5)


class TestResumeAfterEdits(unittest.TestCase):
    def test_edited_label_volume_is_redone(self):
        with tempfile.TemporaryDirectory() as d:
            cohort, out = os.path.join(d, "cohort"), os.path.join(d, "OUT")
            make_cohort(cohort)
            kw = dict(labels=os.path.join(cohort, "LABELS"), num_folds=2)
            convert_cohort(os.path.join(cohort, "IMAGES"), out, **kw)
            label = np.zeros((8, 48, 48), np.uint8)
            label[2:5, 10:20, 10:20] = 1
            path = os.path.join(cohort, "LABELS", "PH0002.nii.gz")
            img = sitk.GetImageFromArray(label)
            img.SetSpacing((0.75, 0.75, 1.5))
            sitk.WriteImage(img, path)
            os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
            summary = convert_cohort(os.path.join(cohort, "IMAGES"), out, resume=True, **kw)
            self.assertEqual((summary["converted"], summary["resumed"]), (1, 4))
            with open(os.path.join(out, "cases.json")) as f:
                cases = {c["case_id"]: c for c in json.load(f)["cases"]}
            self.assertEqual(cases["PH0002"]["boxes"], [[10, 10, 2, 20, 20, 5]])
            with open(os.path.join(out, "convert.log")) as f:
                self.assertIn("case PH0002: its input files changed", f.read())

    def test_stray_temp_files_are_removed(self):
        with tempfile.TemporaryDirectory() as d:
            cohort, out = os.path.join(d, "cohort"), os.path.join(d, "OUT")
            make_cohort(cohort)
            kw = dict(labels=os.path.join(cohort, "LABELS"), num_folds=2)
            convert_cohort(os.path.join(cohort, "IMAGES"), out, **kw)
            for path in (os.path.join(out, ".tmp-abc-cases.json"),
                         os.path.join(out, ".convert_state", ".tmp-x-PH0001.json")):  # fmt: skip
                with open(path, "w") as f:
                    f.write("{")
            convert_cohort(os.path.join(cohort, "IMAGES"), out, resume=True, **kw)
            left = [n for _, _, names in os.walk(out) for n in names if n.startswith(".tmp-")]
            self.assertEqual(left, [])


def _processes_mentioning(text):
    """PIDs of live processes whose command line contains ``text``."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            pids.append(int(pid))
    return pids


def make_slow_cohort(root, num_cases=60, shape=(24, 128, 128)):
    """Enough NIfTI cases that a 2-worker conversion runs for a few seconds."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "LABELS"))
    for i in range(num_cases):
        case_id = f"PH{i:04d}"
        os.makedirs(os.path.join(root, "IMAGES", case_id))
        for p in range(3):
            img = sitk.GetImageFromArray(rng.integers(0, 500, shape, dtype=np.int16))
            sitk.WriteImage(img, os.path.join(root, "IMAGES", case_id, f"{case_id}_{p:04d}.nii"))
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, np.uint8)),
                        os.path.join(root, "LABELS", f"{case_id}.nii"))  # fmt: skip


@unittest.skipUnless(sys.platform.startswith("linux"), "PR_SET_PDEATHSIG is Linux-only")
class TestKilledConverter(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.cohort = os.path.join(self.tmp.name, "c")
        self.out = os.path.join(self.tmp.name, "OUT-k")
        make_slow_cohort(self.cohort)
        self.env = tool_env()
        self.cmd = [sys.executable, TOOL, "--images", os.path.join(self.cohort, "IMAGES"),
                    "--labels", os.path.join(self.cohort, "LABELS"), "--out", self.out,
                    "--folds", "2", "--workers", "2"]  # fmt: skip

    def tearDown(self):
        for pid in _processes_mentioning(self.out):
            os.kill(pid, signal.SIGKILL)
        self.tmp.cleanup()

    def test_a_second_converter_is_locked_out(self):
        from breast_d2.data.convert import _lock_out, _unlock_out

        os.makedirs(self.out)
        fd = _lock_out(self.out)  # this test process plays the running converter
        try:
            res = subprocess.run(self.cmd + ["--resume"], env=self.env, capture_output=True,
                                 text=True, timeout=120)  # fmt: skip
        finally:
            _unlock_out(self.out, fd)
        self.assertEqual(res.returncode, 2, res.stderr)
        self.assertEqual(res.stderr.count("\n"), 1, res.stderr)
        self.assertIn(f"being written by another converter (process {os.getpid()}", res.stderr)

    def test_workers_die_with_a_killed_converter(self):
        proc = subprocess.Popen(self.cmd, env=self.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.time() + 120
            slices = os.path.join(self.out, "slices")
            while not (os.path.isdir(slices) and os.listdir(slices)) and time.time() < deadline:
                time.sleep(0.02)
            self.assertIsNone(proc.poll(), "the converter finished before it could be killed")
            self.assertGreaterEqual(len(_processes_mentioning(self.out)), 2)  # parent + workers
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            deadline = time.time() + 10
            while _processes_mentioning(self.out) and time.time() < deadline:
                time.sleep(0.1)
            self.assertEqual(_processes_mentioning(self.out), [])
        finally:
            if proc.poll() is None:
                proc.kill()
        # the folder resumes to a complete conversion
        res = subprocess.run(self.cmd + ["--resume"], env=self.env, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertEqual(len(os.listdir(os.path.join(self.out, "slices"))), 60)


if __name__ == "__main__":
    unittest.main()


class TestMessages(unittest.TestCase):
    def test_error_printed_once_and_phase_count_checked(self):
        with tempfile.TemporaryDirectory() as d:
            cohort = os.path.join(d, "cohort")
            make_cohort(cohort)
            env = tool_env()
            cmd = [sys.executable, TOOL, "--images", os.path.join(cohort, "IMAGES"), "--labels",
                   os.path.join(cohort, "LABELS"), "--out", os.path.join(d, "OUT"), "--folds", "2",
                   "--phases", "4"]  # fmt: skip
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            self.assertEqual(res.returncode, 2)
            self.assertEqual(res.stderr.count("--phases expects 4"), 1, res.stderr)
            self.assertIn("error: case PH0001: 3 phase(s)", res.stderr)

    def test_input_that_cannot_be_opened_is_not_called_an_output_problem(self):
        with tempfile.TemporaryDirectory() as d:
            cohort = os.path.join(d, "cohort")
            make_cohort(cohort)
            label = os.path.join(cohort, "LABELS", "PH0002.nii.gz")
            os.remove(label)
            os.makedirs(label)  # a folder where the label file should be
            with self.assertRaises(CohortError) as ctx:
                convert_cohort(os.path.join(cohort, "IMAGES"), os.path.join(d, "OUT"),
                               labels=os.path.join(cohort, "LABELS"), num_folds=2)  # fmt: skip
            self.assertNotIn("cannot write output", str(ctx.exception))
            self.assertIn("PH0002", str(ctx.exception))


class TestShards(unittest.TestCase):
    """``--shard K/N`` on several processes at once, then ``--merge-shards`` = one run's bytes."""

    COHORT_FILES = ("cases.json", "splits.json", "fold0_train.json", "fold0_val.json",
                    "fold1_train.json", "fold1_val.json")  # fmt: skip

    def outputs(self, out):
        """Hash of everything a converted folder holds for its users (not logs or state)."""
        return {name: tree_hash(os.path.join(out, name))
                for name in ("slices", "masks") + self.COHORT_FILES}  # fmt: skip

    def test_shards_at_once_then_merge_equal_a_single_run(self):
        with tempfile.TemporaryDirectory() as d:
            cohort = os.path.join(d, "cohort")
            make_cohort(cohort)
            args = ["--images", os.path.join(cohort, "IMAGES"), "--boxes",
                    os.path.join(cohort, "boxes.csv"), "--masks", os.path.join(cohort, "MASKS"),
                    "--folds", "2", "--seed", "3"]  # fmt: skip
            env = tool_env()
            single, sharded = os.path.join(d, "single"), os.path.join(d, "sharded")

            def tool(*extra):
                return subprocess.Popen([sys.executable, TOOL, *args, *extra], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

            procs = [tool("--out", sharded, "--shard", f"{k}/3") for k in range(3)]
            procs.append(tool("--out", single))
            for p in procs:
                _, err = p.communicate(timeout=300)
                self.assertEqual(p.returncode, 0, err)
            self.assertFalse(os.path.exists(os.path.join(sharded, "cases.json")))
            merge = tool("--out", sharded, "--merge-shards")
            _, err = merge.communicate(timeout=300)
            self.assertEqual(merge.returncode, 0, err)
            self.assertEqual(self.outputs(sharded), self.outputs(single))
            for name in self.COHORT_FILES:
                with open(os.path.join(sharded, name), "rb") as a, \
                        open(os.path.join(single, name), "rb") as b:  # fmt: skip
                    self.assertEqual(a.read(), b.read(), name)

    def test_merge_with_a_missing_shard_names_the_cases(self):
        with tempfile.TemporaryDirectory() as d:
            cohort, out = os.path.join(d, "cohort"), os.path.join(d, "OUT")
            make_cohort(cohort)
            kw = dict(labels=os.path.join(cohort, "LABELS"), num_folds=2)
            convert_cohort(os.path.join(cohort, "IMAGES"), out, shard=(0, 2), **kw)
            with self.assertRaises(CohortError) as ctx:
                convert_cohort(os.path.join(cohort, "IMAGES"), out, merge_shards=True, **kw)
            msg = str(ctx.exception)
            self.assertIn("2 case(s) were converted by no shard (PH0002, PH0004)", msg)
            convert_cohort(os.path.join(cohort, "IMAGES"), out, shard=(1, 2), **kw)
            summary = convert_cohort(os.path.join(cohort, "IMAGES"), out, merge_shards=True, **kw)
            self.assertEqual(summary["cases"], 5)

    def test_a_case_a_shard_skipped_stays_skipped_in_the_merge(self):
        with tempfile.TemporaryDirectory() as d:
            cohort, out = os.path.join(d, "cohort"), os.path.join(d, "OUT")
            make_cohort(cohort)
            os.remove(os.path.join(cohort, "IMAGES", "PH0003", "PH0003_0001.nii.gz"))
            kw = dict(labels=os.path.join(cohort, "LABELS"), num_folds=2, skip_bad_cases=True)
            for k in range(2):
                convert_cohort(os.path.join(cohort, "IMAGES"), out, shard=(k, 2), **kw)
            summary = convert_cohort(os.path.join(cohort, "IMAGES"), out, merge_shards=True, **kw)
            self.assertEqual((summary["cases"], summary["bad_cases"]), (4, ["PH0003"]))
            with open(os.path.join(out, "cases.json")) as f:
                self.assertEqual([s["case_id"] for s in json.load(f)["skipped"]], ["PH0003"])
