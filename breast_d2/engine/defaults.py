"""Building blocks of the breast_d2 trainer: fold datasets, epoch schedule, loaders, evaluator."""
import logging
import math
import os
from typing import Dict, List, Sequence

import torch
import yaml

from detectron2.config import CfgNode, get_cfg
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators

from ..config import add_breast_config
from ..data.datasets import dataset_name, default_data_root, register_breast_folds
from ..data.mapper import BreastMaskDatasetMapper, mask_dir_from_config
from ..data.sampling import build_train_sampler

__all__ = [
    "ConfigError",
    "load_breast_config",
    "configure_fold",
    "apply_epoch_schedule",
    "train_dataset_dicts",
    "build_breast_train_loader",
    "build_breast_test_loader",
    "build_breast_evaluator",
]

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message is one line."""


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return f"{getattr(e, 'problem', None) or type(e).__name__}{where}"


def load_breast_config(config_file: str, opts: Sequence[str] = ()) -> CfgNode:
    """detectron2 defaults + breast keys + ``config_file`` (safe YAML) + ``opts`` overrides.

    The file and its ``_BASE_`` files are read with ``yaml.safe_load`` (``allow_unsafe=False``;
    detectron2's default would run ``!!python/...`` tags).

    Args:
        config_file: YAML config path.
        opts: ``KEY VALUE`` pairs as on the command line.

    Returns:
        A mutable config.

    Raises:
        ConfigError: one line naming the file or key: missing file, invalid YAML, a tag that
            would run code, an unknown key, a value of the wrong type, an odd override list.
    """
    if not os.path.isfile(config_file):
        raise ConfigError(f"config file not found: {config_file}")
    cfg = get_cfg()
    add_breast_config(cfg)
    try:
        cfg.merge_from_file(config_file, allow_unsafe=False)
    except yaml.constructor.ConstructorError as e:
        raise ConfigError(
            f"{config_file}: refusing an unsafe YAML tag, configs are loaded safely "
            f"({_yaml_problem(e)})"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{config_file}: not valid YAML ({_yaml_problem(e)})") from None
    except (KeyError, ValueError, TypeError, AttributeError, AssertionError, OSError) as e:
        raise ConfigError(f"{config_file}: {_config_message(e)}") from None
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, TypeError, AttributeError, AssertionError) as e:
        raise ConfigError(f"config override: {_config_message(e)}") from None
    return cfg


def _config_message(e: BaseException) -> str:
    """yacs' message on one line (KeyError's str() would add quotes)."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(text.split()) or type(e).__name__


def configure_fold(cfg, fold: int, data_root: str = "") -> None:
    """Point a (mutable) config at fold ``fold`` of a converted cohort.

    Registers the cohort's folds, sets ``DATASETS.TRAIN/TEST`` to ``breast_fold{K}_train/_val``,
    ``DATASETS.BREAST_ROOT`` and ``DATASETS.FOLD``, appends ``fold{K}`` to ``OUTPUT_DIR`` and
    falls back to the CPU when CUDA is unavailable.
    """
    root = os.path.abspath(data_root or cfg.DATASETS.BREAST_ROOT or default_data_root())
    cfg.DATASETS.BREAST_ROOT = root
    register_breast_folds(root)
    if fold >= 0:
        if not os.path.isfile(os.path.join(root, f"fold{fold}_val.json")):
            raise FileNotFoundError(
                f"fold {fold} not found in {root}: expected fold{fold}_train.json and "
                f"fold{fold}_val.json written by tools/convert_to_coco.py"
            )
        cfg.DATASETS.FOLD = fold
        cfg.DATASETS.TRAIN = (dataset_name(fold, "train"),)
        cfg.DATASETS.TEST = (dataset_name(fold, "val"),)
        cfg.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, f"fold{fold}")
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on the CPU")
        cfg.MODEL.DEVICE = "cpu"


def train_dataset_dicts(cfg) -> List[Dict]:
    """Training slices; only those with a mass when ``DATALOADER.POSITIVE_SLICES_ONLY``."""
    return get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.POSITIVE_SLICES_ONLY
    )


def apply_epoch_schedule(cfg, num_images: int) -> None:
    """Convert ``SOLVER.EPOCHS`` / ``SOLVER.EPOCH_DECAY`` into ``MAX_ITER`` / ``STEPS`` in place.

    One epoch is ``ceil(num_images / SOLVER.IMS_PER_BATCH)`` iterations; the LR is multiplied
    by ``SOLVER.GAMMA`` after every ``EPOCH_DECAY`` epochs (not at the very end).
    """
    if cfg.SOLVER.EPOCHS <= 0:
        return
    if num_images <= 0:
        raise ValueError("SOLVER.EPOCHS is set but the training set is empty")
    iters_per_epoch = math.ceil(num_images / cfg.SOLVER.IMS_PER_BATCH)
    cfg.SOLVER.MAX_ITER = cfg.SOLVER.EPOCHS * iters_per_epoch
    if cfg.SOLVER.EPOCH_DECAY > 0:
        decay_epochs = range(cfg.SOLVER.EPOCH_DECAY, cfg.SOLVER.EPOCHS, cfg.SOLVER.EPOCH_DECAY)
        cfg.SOLVER.STEPS = tuple(e * iters_per_epoch for e in decay_epochs)
    logger.info(
        f"{cfg.SOLVER.EPOCHS} epochs of {num_images} images = {cfg.SOLVER.MAX_ITER} iterations "
        f"(LR steps at {tuple(cfg.SOLVER.STEPS)})"
    )


def _check_mask_dir(cfg) -> None:
    mask_cfg = cfg.INPUT.BREAST_MASK
    if mask_cfg.ENABLED and mask_cfg.SOURCE in ("cached", "gt"):
        mask_dir = mask_dir_from_config(cfg)
        if not os.path.isdir(mask_dir):
            raise FileNotFoundError(
                f"breast mask folder {mask_dir} does not exist: write it with "
                "tools/predict_breast_masks.py, use INPUT.BREAST_MASK.SOURCE gt, or disable "
                "masking with INPUT.BREAST_MASK.ENABLED False"
            )


def build_breast_train_loader(cfg):
    """Train loader over :func:`train_dataset_dicts` with :class:`BreastMaskDatasetMapper`, and
    the low-contrast repeat sampler when ``DATALOADER.LOW_CONTRAST_REPEAT.ENABLED``."""
    _check_mask_dir(cfg)
    mapper = BreastMaskDatasetMapper(cfg, is_train=True)
    dataset = train_dataset_dicts(cfg)
    return build_detection_train_loader(
        cfg, mapper=mapper, dataset=dataset, sampler=build_train_sampler(cfg, dataset)
    )


def build_breast_test_loader(cfg, name: str):
    """Test loader over every slice of ``name`` with the (non-augmenting) masking mapper."""
    _check_mask_dir(cfg)
    return build_detection_test_loader(cfg, name, mapper=BreastMaskDatasetMapper(cfg, False))


def build_breast_evaluator(cfg, name: str, output_folder: str = None):
    """FROC on whole cases (the study's metric), plus COCO AP per slice as a secondary number."""
    from ..evaluation import BreastFROCEvaluator

    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", name)
    evaluators = [BreastFROCEvaluator(name, cfg, output_folder)]
    if MetadataCatalog.get(name).get("json_file"):
        evaluators.append(
            COCOEvaluator(name, tasks=("bbox",), output_dir=output_folder, use_fast_impl=False)
        )
    return DatasetEvaluators(evaluators)
