"""The package declares its dependencies from requirements/*.txt and needs detectron2."""
import ast
import glob
import os
import re
import subprocess
import sys
import tempfile

from helpers import REPO


def _normal(requirement):
    """``"fvcore>=0.1.5,<0.1.6"`` and ``"fvcore<0.1.6,>=0.1.5"`` -> one spelling."""
    name, spec = re.match(r"([A-Za-z0-9_.\-]+)(.*)", requirement.replace(" ", "")).groups()
    return name.lower() + ",".join(sorted(filter(None, spec.split(","))))


def _requirements(name):
    with open(os.path.join(REPO, "requirements", name), encoding="utf-8") as f:
        lines = (re.sub(r"\s+#.*$|^#.*$", "", line).strip() for line in f)
        return sorted(_normal(line) for line in lines if line)


def test_metadata_declares_the_requirements_files():
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", d], cwd=REPO,
                       check=True, capture_output=True)  # fmt: skip
        with open(os.path.join(d, "breast_d2.egg-info", "requires.txt"), encoding="utf-8") as f:
            text = f.read()
    sections, current = {}, ""
    for line in text.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif line.strip():
            sections.setdefault(current, []).append(_normal(line.strip()))
    runtime = _requirements("requirements.txt")
    assert sorted(sections[""]) == runtime
    assert sorted(sections["test"]) == sorted(sections["dev"]) == _requirements("test.txt")
    names = {re.split(r"[<>=!;]", r)[0] for r in runtime}
    assert not names & {"torch", "torchvision", "detectron2"}  # the user's environment has them
    assert {"simpleitk", "segmentation-models-pytorch", "openpyxl"} <= names


def test_import_without_detectron2_is_one_clear_line():
    # sys.modules[name] = None is how Python marks a module that cannot be imported
    code = "import sys; sys.modules['detectron2'] = None; import breast_d2"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=REPO))  # fmt: skip
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: breast_d2 needs detectron2") and "make env" in last


def test_help_examples_keep_their_line_breaks():
    # A single backslash at the end of a line inside a plain (non-raw) docstring joins the lines,
    # so --help would print a multi-line example as one line with a run of spaces in it.
    broken = []
    for path in sorted(glob.glob(os.path.join(REPO, "tools", "*.py"))
                       + glob.glob(os.path.join(REPO, "benchmarks", "*.py"))):  # fmt: skip
        with open(path, encoding="utf-8") as f:
            doc = ast.get_docstring(ast.parse(f.read()), clean=False) or ""
        broken += [f"{os.path.basename(path)}: {line.strip()[:60]}"
                   for line in doc.splitlines() if re.search(r"\S {4,}--\w", line)]  # fmt: skip
    assert not broken, broken
