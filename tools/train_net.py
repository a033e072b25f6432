#!/usr/bin/env python
"""
Train or evaluate the breast mass detector (Faster R-CNN) on one patient-level fold.

    python tools/train_net.py --config-file configs/frcnn_r101.yaml --fold 0
    python tools/train_net.py --config-file configs/frcnn_r101.yaml --fold 0 \\
        --eval-only MODEL.WEIGHTS output/frcnn_r101/fold0/model_final.pth

Training reads the fold's training slices that contain a mass, masked to the breast region by
:class:`breast_d2.data.BreastMaskDatasetMapper`; evaluation runs on every slice of the fold's
validation cases, merges slice detections into 3D candidates and reports FROC (written to
OUTPUT_DIR/fold{K}/inference/). Multi-GPU / multi-machine through detectron2's ``launch``.
"""
import logging
import os
import sys
import weakref

from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.engine.hooks import EvalHook, PeriodicCheckpointer
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from breast_d2.cli import fail
from breast_d2.data.errors import CohortError
from breast_d2.engine import (
    BreastCheckpointer,
    CheckpointError,
    ConfigError,
    WeightsUnavailableError,
    apply_epoch_schedule,
    build_breast_evaluator,
    build_breast_test_loader,
    build_breast_train_loader,
    configure_fold,
    load_breast_config,
    resolve_weights,
    train_dataset_dicts,
)
from breast_d2.modeling import apply_test_time_flip

logger = logging.getLogger("breast_d2")


class Trainer(DefaultTrainer):
    """DefaultTrainer with the breast-masking mapper, the FROC evaluator and safe loading."""

    def __init__(self, cfg):
        super().__init__(cfg)
        # Weights load with BreastCheckpointer: no code from a .pkl/.pth file ever runs.
        self.checkpointer = BreastCheckpointer(
            self._trainer.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        for hook in self._hooks:
            if isinstance(hook, PeriodicCheckpointer):
                hook.checkpointer = self.checkpointer

    def build_hooks(self):
        hooks = super().build_hooks()
        if not self.cfg.TEST.FINAL_EVAL and self.cfg.TEST.EVAL_PERIOD <= 0:
            hooks = [h for h in hooks if not isinstance(h, EvalHook)]
        return hooks

    @classmethod
    def build_train_loader(cls, cfg):
        return build_breast_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_breast_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_breast_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """DefaultTrainer.test, on each slice and its mirror image when TEST.BREAST_TTA.FLIP."""
        return super().test(cfg, apply_test_time_flip(cfg, model), evaluators)


def setup(args):
    """Create the config: defaults + breast keys + file + command line, fold and schedule."""
    cfg = load_breast_config(args.config_file, args.opts)  # safe YAML, one-line errors
    configure_fold(cfg, args.fold, args.data)
    if args.eval_only:
        _check_eval_weights(cfg, args.resume)
    else:
        apply_epoch_schedule(cfg, len(train_dataset_dicts(cfg)))
    cfg.MODEL.WEIGHTS = resolve_weights(cfg.MODEL.WEIGHTS)
    cfg.freeze()
    default_setup(cfg, args)
    # breast_d2's own log lines (e.g. the low-contrast sampler's summary) in the console and
    # OUTPUT_DIR/log.txt, beside detectron2's.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="breast_d2",
                 abbrev_name="bd2")
    return cfg


def _check_eval_weights(cfg, resume: bool) -> None:
    """Evaluating a randomly initialised model gives meaningless FROC numbers: refuse it."""
    if cfg.MODEL.WEIGHTS:
        return
    if resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return  # --resume loads OUTPUT_DIR's last checkpoint
    raise WeightsUnavailableError(
        "--eval-only needs trained weights: pass MODEL.WEIGHTS /path/to/model_final.pth"
    )


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        BreastCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser():
    parser = default_argument_parser(__doc__)
    parser.add_argument("--fold", type=int, default=-1, help="patient-level fold K (0-based)")
    parser.add_argument(
        "--data", default="", help="converted cohort folder (default: $BREAST_D2_DATA or "
        "datasets/phantom_coco)"
    )
    return parser


def cli(argv=None) -> int:
    """Command-line entry point: bad input is one ``error: ...`` line and exit code 2."""
    args = argument_parser().parse_args(argv)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (ConfigError, CheckpointError, WeightsUnavailableError, CohortError,
            FileNotFoundError) as e:
        fail(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
