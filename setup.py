#!/usr/bin/env python
"""Installs the breast_d2 detectron2 plugin (``pip install -e .``).

Dependencies come from one source, ``requirements/*.txt`` (which ``scripts/setup_env.sh`` installs
too). torch, torchvision and detectron2 are not declared: an existing detectron2 environment
provides them (``make`` builds them in ``.venv``).
"""
import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_requirements(name):
    """Requirement lines of ``requirements/<name>`` without comments and blank lines."""
    with open(os.path.join(HERE, "requirements", name), encoding="utf-8") as f:
        lines = (re.sub(r"\s+#.*$|^#.*$", "", line).strip() for line in f)
        return [line for line in lines if line]


TEST = read_requirements("test.txt")

setup(
    name="breast_d2",
    version="0.1.0",
    description="Detectron2 plugin for breast mass detection in DCE-MRI",
    packages=find_packages(exclude=("tests", "tools", "configs")),
    python_requires=">=3.9",
    install_requires=read_requirements("requirements.txt"),
    extras_require={"test": TEST, "dev": TEST},
)
