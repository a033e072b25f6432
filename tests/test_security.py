"""Nothing from a config, checkpoint or converted folder runs code or writes outside its folder:
safe YAML, restricted pickles, weights_only torch.load, validated case ids, path_inside."""
import os
import pickle

import numpy as np
import pytest
import torch

from breast_d2.fileio import path_inside
from helpers import QUICK, REPO


class _Payload:
    """Unpickling this writes a marker file (what a hostile checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _one_line(text):
    return text.count("\n") == 0 and text.strip() == text and text


# ----------------------------------------------------------------------------- configs


def test_config_with_python_tag_is_refused_and_does_not_run(tmp_path):
    from breast_d2.engine import ConfigError, load_breast_config

    marker = tmp_path / "ran"
    cfg_file = tmp_path / "evil.yaml"
    cfg_file.write_text(
        f"_BASE_: {QUICK}\nOUTPUT_DIR: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    with pytest.raises(ConfigError) as e:
        load_breast_config(str(cfg_file))
    assert not marker.exists()
    assert _one_line(str(e.value)) and "unsafe YAML tag" in str(e.value)
    assert str(cfg_file) in str(e.value)


def test_python_tag_in_a_base_file_is_refused_too(tmp_path):
    from breast_d2.engine import ConfigError, load_breast_config

    marker = tmp_path / "ran"
    base = tmp_path / "base.yaml"
    base.write_text(f"OUTPUT_DIR: !!python/object/apply:os.system ['touch {marker}']\n")
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: base.yaml\nSOLVER:\n  BASE_LR: 0.01\n")
    with pytest.raises(ConfigError, match="unsafe YAML tag"):
        load_breast_config(str(child))
    assert not marker.exists()


def test_config_errors_are_one_line_naming_the_key(tmp_path):
    from breast_d2.engine import ConfigError, load_breast_config

    with pytest.raises(ConfigError, match="config file not found"):
        load_breast_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="Non-existent key: SOLVER.NOPE") as e:
        load_breast_config(QUICK, ["SOLVER.NOPE", "1"])
    assert _one_line(str(e.value))
    with pytest.raises(ConfigError, match="SOLVER.MAX_ITER") as e:
        load_breast_config(QUICK, ["SOLVER.MAX_ITER", "many"])
    assert _one_line(str(e.value))
    bad = tmp_path / "bad.yaml"
    bad.write_text("SOLVER: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as e:
        load_breast_config(str(bad))
    assert _one_line(str(e.value))
    cfg = load_breast_config(QUICK, ["SOLVER.MAX_ITER", "7"])
    assert cfg.SOLVER.MAX_ITER == 7


def test_no_tool_or_library_loads_configs_unsafely():
    """Every merge_from_file in the project passes allow_unsafe=False (grep, like a linter)."""
    offenders = []
    for folder in ("breast_d2", "tools", "benchmarks", "tests"):
        for dirpath, _, names in os.walk(os.path.join(REPO, folder)):
            for name in (n for n in names if n.endswith(".py")):
                path = os.path.join(dirpath, name)
                with open(path) as f:
                    for i, line in enumerate(f, 1):
                        if "merge_from_file(" in line and "allow_unsafe=False" not in line:
                            if "def merge_from_file" not in line and "grep" not in line:
                                offenders.append(f"{path}:{i}")
                        if "torch.load(" in line and "weights_only=True" not in line:
                            if not line.lstrip().startswith(("#", '"')) and "grep" not in line:
                                offenders.append(f"{path}:{i}")
    assert offenders == []


# ----------------------------------------------------------------------------- checkpoints


def test_crafted_pkl_payload_does_not_run(tmp_path):
    from breast_d2.engine import CheckpointError, load_pickle_restricted

    marker = tmp_path / "ran"
    evil = tmp_path / "R-101.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"model": {"w": _Payload(str(marker))}, "__author__": "x"}, f)
    with pytest.raises(CheckpointError) as e:
        load_pickle_restricted(str(evil))
    assert not marker.exists()
    message = str(e.value)
    assert _one_line(message) and "refusing to load io.open" in message and str(evil) in message


def test_model_zoo_style_pickle_still_loads(tmp_path):
    from collections import OrderedDict

    from breast_d2.engine import load_pickle_restricted

    weights = {"model": OrderedDict([("res2.conv1.weight", np.ones((4, 3, 1, 1), np.float32)),
                                     ("res2.bn.mean", np.arange(4, dtype=np.float64))]),
               "__author__": "FAIR", "matching_heuristics": True, "epoch": np.int64(3),
               "scale": np.float32(0.5), "tags": {"a", "b"}}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"zoo{protocol}.pkl"
        with open(path, "wb") as f:
            pickle.dump(weights, f, protocol=protocol)
        loaded = load_pickle_restricted(str(path))
        assert loaded["__author__"] == "FAIR" and loaded["tags"] == {"a", "b"}
        np.testing.assert_array_equal(loaded["model"]["res2.conv1.weight"],
                                      weights["model"]["res2.conv1.weight"])
        assert loaded["epoch"] == 3 and loaded["scale"] == np.float32(0.5)


def test_checkpointer_loads_pkl_into_a_model_and_refuses_payloads(tmp_path):
    from breast_d2.engine import BreastCheckpointer, CheckpointError

    model = torch.nn.Linear(3, 2)
    zoo = tmp_path / "zoo.pkl"
    state = {k: v.detach().numpy() + 1.0 for k, v in model.state_dict().items()}
    with open(zoo, "wb") as f:
        pickle.dump({"model": state, "__author__": "test"}, f)
    BreastCheckpointer(torch.nn.Linear(3, 2)).load(str(zoo))  # no error
    target = torch.nn.Linear(3, 2)
    BreastCheckpointer(target).load(str(zoo))
    np.testing.assert_allclose(target.weight.detach().numpy(), state["weight"])

    marker = tmp_path / "ran"
    for name in ("evil.pkl", "evil.pth"):
        evil = tmp_path / name
        if name.endswith(".pkl"):
            with open(evil, "wb") as f:
                pickle.dump({"model": _Payload(str(marker)), "__author__": "x"}, f)
        else:  # torch.save pickles the object too; weights_only=True must refuse it
            torch.save({"model": _Payload(str(marker))}, evil)
        with pytest.raises(CheckpointError) as e:
            BreastCheckpointer(torch.nn.Linear(3, 2)).load(str(evil))
        assert _one_line(str(e.value)) and str(evil) in str(e.value)
    assert not marker.exists()

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a loadable PyTorch checkpoint") as e:
        BreastCheckpointer(torch.nn.Linear(3, 2)).load(str(garbage))
    assert _one_line(str(e.value))


# ----------------------------------------------------------------------------- paths


def test_path_inside_refuses_escapes(tmp_path):
    root = str(tmp_path / "out")
    os.makedirs(root)
    assert path_inside(root, "a", "b.png") == os.path.join(root, "a", "b.png")
    for parts in (("..", "x"), ("/etc/passwd",), ("a", "..", "..", "x")):
        with pytest.raises(ValueError, match="would leave the output folder"):
            path_inside(root, *parts)
    os.symlink(str(tmp_path), os.path.join(root, "link"))
    with pytest.raises(ValueError):
        path_inside(root, "link", "x")
