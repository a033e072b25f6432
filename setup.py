#!/usr/bin/env python
"""Installs the breast_d2 detectron2 plugin (``pip install -e .``)."""
from setuptools import find_packages, setup

setup(
    name="breast_d2",
    version="0.1.0",
    description="Detectron2 plugin for breast mass detection in DCE-MRI",
    packages=find_packages(exclude=("tests", "tools", "configs")),
    python_requires=">=3.9",
)
