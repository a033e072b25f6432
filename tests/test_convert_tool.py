"""Tests for tools/convert_to_coco.py: summary on success, one-line error and exit code 2."""
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import SimpleITK as sitk

from helpers import CSV_HEADER, load_tool, tool_path

TOOL = tool_path("convert_to_coco")


def make_cohort(root, num_cases=3):
    """IMAGES/ with two NIfTI phases per case and a boxes.csv with one box per case."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(num_cases):
        case_id = f"C{i}"
        os.makedirs(os.path.join(root, "IMAGES", case_id))
        for p in range(2):
            image = sitk.GetImageFromArray(rng.normal(100, 5, (8, 48, 48)).astype(np.int16))
            path = os.path.join(root, "IMAGES", case_id, f"{case_id}_{p:04d}.nii.gz")
            sitk.WriteImage(image, path)
        rows.append(f"{case_id},5,12,6,14,2,4\n")
    with open(os.path.join(root, "boxes.csv"), "w") as f:
        f.write(CSV_HEADER + "".join(rows))


class TestConvertTool(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.root = cls._tmp.name
        make_cohort(cls.root)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def run_tool(self, *args):
        """Run the tool's main() in this process (importing breast_d2 again costs seconds)."""
        tool = load_tool("convert_to_coco")
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = tool.main(list(args))
            except SystemExit as e:
                code = e.code
        return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())

    def test_real_process_exit_code(self):
        bad = os.path.join(self.root, "IMAGES", "nope")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        res = subprocess.run([sys.executable, TOOL, "--images", bad, "--boxes", bad, "--out", bad],
                             capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
        self.assertEqual(res.returncode, 2, res.stderr)
        last = res.stderr.strip().splitlines()[-1]
        self.assertEqual(last, f"error: boxes table {bad} does not exist")
        self.assertNotIn("Traceback", res.stderr)

    def test_success_and_errors(self):
        images, csv = os.path.join(self.root, "IMAGES"), os.path.join(self.root, "boxes.csv")
        out = os.path.join(self.root, "OUT")
        res = self.run_tool("--images", images, "--boxes", csv, "--out", out, "--folds", "3")
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertIn("converted 3 cases", res.stdout)
        self.assertIn("24 slices, 3 lesions, 3 folds", res.stdout)
        with open(os.path.join(out, "cases.json")) as f:
            self.assertEqual(json.load(f)["cases"][0]["boxes"], [[5, 4, 1, 14, 12, 4]])

        bad_csv = os.path.join(self.root, "bad.csv")
        with open(bad_csv, "w") as f:
            f.write(CSV_HEADER + "C0,5,12,6,14,2,4\nC1,5,12,6,14,9,4\n")
        error_cases = [
            # bad input: a CohortError from the library
            (["--images", images, "--boxes", bad_csv, "--out", out + "2", "--folds", "3"],
             "bad.csv line 3"),
            # existing output without --resume
            (["--images", images, "--boxes", csv, "--out", out, "--folds", "3"], "--resume"),
            # usage errors: mutually exclusive sources, missing argument
            (["--images", images, "--boxes", csv, "--labels", images, "--out", out + "3"],
             "--labels"),
            (["--images", images, "--out", out + "4"], "--boxes"),
        ]
        for args, needle in error_cases:
            res = self.run_tool(*args)
            self.assertEqual(res.returncode, 2, (args, res.stderr))
            lines = [ln for ln in res.stderr.splitlines() if ln.strip() and "Warning" not in ln
                     and "warnings.warn" not in ln]  # fmt: skip
            self.assertEqual(len(lines), 1, res.stderr)
            self.assertTrue(lines[0].startswith("error: "), lines[0])
            self.assertIn(needle, lines[0])
            self.assertNotIn("Traceback", res.stderr)
        self.assertFalse(os.path.exists(out + "2"))  # validation failed before anything was written

        res = self.run_tool("--images", images, "--boxes", csv, "--out", out, "--folds", "3",
                            "--resume")  # fmt: skip
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertIn("(0 new, 3 resumed)", res.stdout)


if __name__ == "__main__":
    unittest.main()
