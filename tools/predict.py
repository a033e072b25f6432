#!/usr/bin/env python
"""
Detect breast masses in a new DCE-MRI case.

    python tools/predict.py --config-file configs/frcnn_cpu_demo.yaml \\
        --weights output/demo/det_masked/fold0/model_final.pth \\
        --seg-weights output/demo/seg/unetplusplus_fold0/model_best.pth \\
        --images path/to/IMAGES/CASE_ID --out output/predict/CASE_ID

--images is a case folder (NIfTI phases CASE_0000.nii.gz, CASE_0001.nii.gz, ... or one DICOM
series folder per phase) or the phase files in order (pre-contrast first). Writes to --out:
  candidates.json   3D candidates (tools/froc.py format) + box_mm / center_mm (world, mm)
  candidates.nii.gz candidate i's box filled with i+1 (by descending score), input geometry
  overlay.png       montage of slices with candidates and the breast-mask outline
  detections.json   the slice detections before merging
"""
import argparse
import logging
import os
import sys

import cv2
import SimpleITK as sitk

from breast_d2.cli import OneLineErrorParser, fail, setup_tool_logging
from breast_d2.data.errors import CohortError
from breast_d2.engine import (
    CheckpointError,
    ConfigError,
    WeightsUnavailableError,
    load_breast_config,
    resolve_weights,
)
from breast_d2.inference import CaseDetector, candidate_label_volume
from breast_d2.fileio import atomic_path, ensure_writable_dir, write_json_atomic
from breast_d2.visualize import case_montage


def parse_args(argv=None):
    p = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, help="the detector's training config")
    p.add_argument("--weights", required=True, help="detector checkpoint (model_final.pth)")
    p.add_argument("--seg-weights", default="", help="breast segmentation checkpoint")
    p.add_argument("--images", required=True, nargs="+", help="case folder or phase files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--case-id", default="", help="name of the case (default: folder name)")
    p.add_argument("--channels", default="1,1-0,0",
                   help="channel spec used at conversion (convert_to_coco.py --channels)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=4, help="slices per forward pass")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def run(args):
    """Detect masses in one case (``args`` from :func:`parse_args`) and write the outputs."""
    cfg = load_breast_config(args.config_file, args.opts + ["MODEL.DEVICE", args.device])
    ensure_writable_dir(args.out)  # before the inference, not after
    src = args.images[0] if len(args.images) == 1 else args.images
    case_id = args.case_id or os.path.basename(os.path.normpath(args.images[0])).split(".")[0]
    masker = None
    if args.seg_weights:
        from breast_d2.segmentation.predict import BreastMaskPredictor

        masker = BreastMaskPredictor(args.seg_weights, device=args.device).predict_case
    detector = CaseDetector(cfg, resolve_weights(args.weights), masker, args.channels,
                            args.batch_size)
    result = detector(src, case_id)
    write_json_atomic(os.path.join(args.out, "detections.json"), result.detections, indent=1)
    write_json_atomic(os.path.join(args.out, "candidates.json"), result.candidates, indent=1)
    labels = candidate_label_volume(result.candidates, result.geometry.shape_zyx)
    with atomic_path(os.path.join(args.out, "candidates.nii.gz")) as tmp:
        sitk.WriteImage(result.geometry.to_image(labels), tmp)
    montage = case_montage(result.slices_rgb, result.candidates[:8], mask=result.breast_mask)
    with atomic_path(os.path.join(args.out, "overlay.png")) as tmp:
        cv2.imwrite(tmp, montage[..., ::-1])
    print(f"{case_id}: {len(result.candidates)} candidates "
          f"(top score {result.candidates[0]['score']:.3f})" if result.candidates
          else f"{case_id}: no candidates")
    for c in result.candidates[:5]:
        print(f"  score {c['score']:.3f}  box {c['box']}  centre (mm) {c['center_mm']}")
    print(f"written to {args.out}")


def main(argv=None) -> int:
    """Command-line entry point: bad input is one ``error: ...`` line and exit code 2."""
    args = parse_args(argv)
    setup_tool_logging(logging.WARNING)
    try:
        run(args)
    except (ConfigError, CheckpointError, CohortError, WeightsUnavailableError, OSError,
            ValueError) as e:
        fail(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
