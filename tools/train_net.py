#!/usr/bin/env python
"""
Train or evaluate the breast mass detector (Faster R-CNN) on one patient-level fold.

    python tools/train_net.py --config-file configs/frcnn_r101.yaml --fold 0
    python tools/train_net.py --config-file configs/frcnn_r101.yaml --fold 0 \
        --eval-only MODEL.WEIGHTS output/frcnn_r101/fold0/model_final.pth

Training reads the fold's training slices that contain a mass, masked to the breast region by
:class:`breast_d2.data.BreastMaskDatasetMapper`; evaluation runs on every slice of the fold's
validation cases, merges slice detections into 3D candidates and reports FROC (written to
OUTPUT_DIR/fold{K}/inference/). Multi-GPU / multi-machine through detectron2's ``launch``.
"""
import logging
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.engine.hooks import EvalHook

from breast_d2.config import add_breast_config
from breast_d2.engine import (
    WeightsUnavailableError,
    apply_epoch_schedule,
    build_breast_evaluator,
    build_breast_test_loader,
    build_breast_train_loader,
    configure_fold,
    resolve_weights,
    train_dataset_dicts,
)

logger = logging.getLogger("breast_d2")


class Trainer(DefaultTrainer):
    """DefaultTrainer with the breast-masking mapper and the FROC evaluator."""

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


def setup(args):
    """Create the config: defaults + breast keys + file + command line, fold and schedule."""
    cfg = get_cfg()
    add_breast_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    configure_fold(cfg, args.fold, args.data)
    if not args.eval_only:
        apply_epoch_schedule(cfg, len(train_dataset_dicts(cfg)))
        cfg.MODEL.WEIGHTS = resolve_weights(cfg.MODEL.WEIGHTS)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
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


if __name__ == "__main__":
    args = argument_parser().parse_args()
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (WeightsUnavailableError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
