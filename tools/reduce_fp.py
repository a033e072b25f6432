#!/usr/bin/env python
"""Second-stage false-positive reducer on saved 3D candidates, trained out of fold.

Cross-validation (no detector retraining; reads each fold's froc.json, candidates.json and
detections.json under CV/detector/fold*/inference/*/ or CV/fold*/inference/*/)::

    python tools/reduce_fp.py --cv OUT/masked --data OUT/coco --out OUT/masked_fp

For fold K a LightGBM classifier (breast_d2/reduction) is trained on the candidates of the other
folds' validation cases only and rescores fold K's candidates. Writes, under --out:
features/fold{K}.npz (feature cache; a rerun reuses it), models/fold{K}.txt + .txt.json (text
model + provenance), fold{K}/{candidates,froc}.json (rescored, same FROC parameters as the input
froc.json), pooled/froc.json, froc_folds.json, compare.json (paired CPM bootstrap, pooled after
vs before), reduce_fp.md (per-fold sens@1, sens@3.4, CPM before/after) and summary.json.

One final model for new cases (not the folds' own), trained on every fold's out-of-fold
candidates except the cases named by --exclude-cases (ids, or @FILE with one id per line);
writes OUT/models/final.txt + .txt.json and OUT/final.md::

    python tools/reduce_fp.py --cv OUT/masked --data OUT/coco --final --out OUT/fp_final

Score a new evaluation folder with saved models (one model file, or a folder of them whose
probabilities are averaged); a model refuses the cases it was trained on::

    python tools/reduce_fp.py --apply OUT/masked_fp/models --eval DIR --data OUT/coco --out DIR2

Bad input stops with one line ``error: ...`` and exit code 2.
"""
import argparse
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from breast_d2.cli import OneLineErrorParser, setup_tool_logging
from breast_d2.evaluation.compare import compare_froc, format_compare_line
from breast_d2.evaluation.folds import evaluate_fold_dirs
from breast_d2.evaluation.froc import compute_froc
from breast_d2.evaluation.io import load_cases_json, save_froc
from breast_d2.evaluation.tables import format_cell, format_mean_sd, markdown_table
from breast_d2.fileio import ensure_writable_dir, path_inside, write_atomic, write_json_atomic
from breast_d2.reduction import (
    FEATURE_VERSION,
    SCORE_MODES,
    FoldRun,
    ReductionError,
    candidate_hits,
    feature_names,
    find_fold_dirs,
    fold_features,
    load_fold_run,
    load_reducer,
    out_of_fold,
    train_final,
)
from breast_d2.reduction.features import MASK_SOURCES
from breast_d2.reduction.reducer import NUM_TREES

logger = logging.getLogger("breast_d2.reduce_fp")


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineErrorParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cv", help="cross-validation output folder (detector/fold*/inference/*/)")
    p.add_argument("--apply", metavar="MODEL", help="a models/fold{K}.txt file or a models folder")
    p.add_argument("--eval", metavar="DIR", help="with --apply: the evaluation folder to score")
    p.add_argument("--data", required=True, help="converted folder (cases.json, masks/)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--final", action="store_true",
                   help="with --cv: train one model on all folds' candidates for new cases")
    p.add_argument("--exclude-cases", type=case_id_list, default=[], metavar="IDS",
                   help="with --final: comma-separated case ids, or @FILE (one per line), whose "
                        "candidates must not train the model")
    p.add_argument("--masks", choices=MASK_SOURCES, default=None,
                   help="breast masks for the position features (default auto: masks/fold{K}, "
                        "else masks/gt; --apply: the model's)")
    p.add_argument("--no-kinetics", action="store_true",
                   help="do not read the source volumes (kinetic features missing)")
    p.add_argument("--score-mode", choices=SCORE_MODES, default="prob",
                   help="new score: the probability, or probability x detector score")
    p.add_argument("--trees", type=int, default=NUM_TREES, help="boosting rounds")
    p.add_argument("--seed", type=int, default=0, help="LightGBM and bootstrap seed")
    p.add_argument("--bootstrap", type=int, default=None,
                   help="case resamples of the CIs and the comparison (default: the input's)")
    args = p.parse_args(argv)
    if bool(args.cv) == bool(args.apply):
        p.error("give exactly one of --cv and --apply")
    if args.apply and not args.eval:
        p.error("--apply needs --eval DIR")
    if args.eval and not args.apply:
        p.error("--eval goes with --apply")
    if args.final and not args.cv:
        p.error("--final goes with --cv")
    if args.exclude_cases and not args.final:
        p.error("--exclude-cases goes with --final")
    if args.trees < 1:
        p.error(f"--trees must be >= 1, got {args.trees}")
    if args.bootstrap is not None and args.bootstrap < 0:
        p.error(f"--bootstrap must be >= 0, got {args.bootstrap}")
    return args


def case_id_list(text: str) -> List[str]:
    """``"A,B"`` or ``"@FILE"`` (one id per line, blank lines and ``#`` comments skipped)."""
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as f:
                lines = [ln.split("#", 1)[0].strip() for ln in f]
        except OSError as e:
            raise argparse.ArgumentTypeError(f"cannot read {text[1:]}: {e.strerror}") from None
        ids = [ln for ln in lines if ln]
    else:
        ids = [c.strip() for c in text.split(",") if c.strip()]
    if not ids:
        raise argparse.ArgumentTypeError(f"no case id in {text!r}")
    return ids


def _check_out(out: str, inputs: Sequence[str]) -> str:
    """Refuse an output folder that is (or lies inside) an input folder; create it."""
    real = os.path.realpath(out)
    for d in inputs:
        rd = os.path.realpath(d)
        if real == rd or real.startswith(rd.rstrip(os.sep) + os.sep):
            raise ReductionError(f"--out {out} lies inside the input folder {d}: choose another")
    return ensure_writable_dir(out)


def _num_post(cases: Dict[str, Dict[str, Any]]) -> int:
    """Most post-contrast phases of any case (the ``enh_k`` columns)."""
    counts = [len(c.get("phases") or []) or int(c.get("num_phases") or 0) for c in cases.values()]
    return max([n - 1 for n in counts] + [0])


def _bootstrap(args, run: FoldRun) -> int:
    if args.bootstrap is not None:
        return args.bootstrap
    return int((run.froc.get("bootstrap") or {}).get("resamples", 0))


def _rescored(run: FoldRun, scores: np.ndarray) -> List[Dict[str, Any]]:
    """The fold's candidates with ``score`` replaced, the detector's kept as ``det_score``."""
    return [dict(c, score=float(s), det_score=c["score"]) for c, s in zip(run.candidates, scores)]


def _write_fold(run, cands, cases, args, out_dir, bootstrap, extra) -> Dict[str, Any]:
    gt = [cases[c] for c in run.case_ids]
    result = compute_froc(cands, gt, bootstrap=bootstrap, seed=args.seed, **run.froc_params())
    result["merge"] = run.froc.get("merge")
    result["inputs"] = {"ground_truth": os.path.abspath(os.path.join(args.data, "cases.json")),
                        "candidates": os.path.abspath(os.path.join(out_dir, "candidates.json")),
                        "evaluation": os.path.abspath(run.path)}
    result["reducer"] = extra
    save_froc(result, out_dir, candidates=cands)
    return result


def _row(name: str, n_cases, n_les, n_cand, before, after) -> List[str]:
    cells = [name, str(n_cases), str(n_les), str(n_cand)]
    for key in ("1", "3.4"):
        cells += [format_cell(before["sensitivity_at"].get(key)),
                  format_cell(after["sensitivity_at"].get(key))]
    return cells + [format_cell(before["cpm"]), format_cell(after["cpm"])]


_HEADERS = ["Fold", "Cases", "Masses", "Candidates", "sens@1 before", "sens@1 after",
            "sens@3.4 before", "sens@3.4 after", "CPM before", "CPM after"]


def _prepare_cv(args):
    """Load every fold of ``args.cv`` with its features (cached in OUT/features) and hit labels.

    Returns:
        ``(cases, dirs, out, runs, labels, names, params, masks_used)``.
    """
    cases = {c["case_id"]: c for c in load_cases_json(os.path.join(args.data, "cases.json"))}
    dirs = find_fold_dirs(args.cv)
    # OUT may lie in the cross-validation job folder (tools/cross_validate.py writes
    # CV/fp_reducer), never in the folder of its fold evaluations or in the data.
    detector = os.path.join(args.cv, "detector")
    folds_home = detector if os.path.isdir(detector) else args.cv
    out = _check_out(args.out, [folds_home, args.data] + dirs)
    runs = [load_fold_run(d) for d in dirs]
    params = runs[0].froc_params()
    for r in runs[1:]:
        if r.froc_params() != params:
            raise ReductionError(f"{r.path}: FROC parameters {r.froc_params()} differ from "
                                 f"{runs[0].path}'s {params}")
    num_post = _num_post(cases)
    names = feature_names(num_post)
    mask_source = args.masks or "auto"
    masks_used: Dict[int, Any] = {}
    for r in runs:
        cache = path_inside(out, "features", f"fold{r.fold}.npz")
        info = fold_features(r, cases, args.data, num_post, cache, mask_source,
                             not args.no_kinetics)
        masks_used[r.fold] = info["mask_sources"]
        logger.info("fold %s: %d candidates, features %s (breast masks: %s)", r.fold,
                    len(r.arrays), "from cache" if info["cached"] else "computed",
                    info["mask_sources"])
    labels = [candidate_hits(r, cases) for r in runs]
    return cases, dirs, out, runs, labels, names, params, masks_used


def run_final(args, argv: Sequence[str]) -> str:
    """One model on all folds' out-of-fold candidates minus ``--exclude-cases``."""
    cases, _, out, runs, labels, names, params, masks_used = _prepare_cv(args)
    unknown = sorted(set(args.exclude_cases) - set(cases))
    if unknown:
        raise ReductionError(f"--exclude-cases: case {unknown[0]!r} is not in "
                             f"{os.path.join(args.data, 'cases.json')}")
    red = train_final(
        runs, labels, names, args.trees, args.seed, args.exclude_cases,
        command=["tools/reduce_fp.py"] + list(argv), cv=os.path.abspath(args.cv),
        data=os.path.abspath(args.data), froc_params=params, feature_version=FEATURE_VERSION,
        mask_source=args.masks or "auto", kinetics=not args.no_kinetics,
        score_mode=args.score_mode, mask_sources=masks_used)
    model = path_inside(out, "models", "final.txt")
    red.save(model)
    prov = red.provenance
    text = (f"Final false-positive reducer: {model}\n\n"
            f"- trained on {prov['num_train_candidates']} candidates ({prov['num_train_hits']} "
            f"hits) of {len(prov['training_case_ids'])} cases, folds {prov['training_folds']}; "
            f"each candidate comes from the fold model that did not train on its case\n"
            f"- excluded: {len(prov['excluded_case_ids'])} case(s)"
            + (f" ({prov['excluded_case_ids'][0]} ... {prov['excluded_case_ids'][-1]})"
               if prov["excluded_case_ids"] else "") + "\n"
            f"- {args.trees} trees, features v{FEATURE_VERSION}, score mode {args.score_mode}; "
            "it refuses to score any of its training cases\n")
    write_atomic(os.path.join(out, "final.md"), lambda f: f.write(text))
    return text


def run_cv(args, argv: Sequence[str]) -> str:
    cases, dirs, out, runs, labels, names, params, masks_used = _prepare_cv(args)
    command = ["tools/reduce_fp.py"] + list(argv)
    reducers = out_of_fold(
        runs, labels, names, args.trees, args.seed, command=command,
        cv=os.path.abspath(args.cv), data=os.path.abspath(args.data), froc_params=params,
        feature_version=FEATURE_VERSION, mask_source=args.masks or "auto",
        kinetics=not args.no_kinetics, score_mode=args.score_mode)
    rows, results, all_after, all_before, all_gt = [], [], [], [], []
    fold_dirs = []
    for r, red, y in zip(runs, reducers, labels):
        model = path_inside(out, "models", f"fold{r.fold}.txt")
        red.provenance["mask_sources"] = masks_used[r.fold]
        red.save(model)
        scores = red.predict(r.x, r.row_case_ids, r.arrays.scores, args.score_mode,
                             where=model)
        cands = _rescored(r, scores)
        fold_dir = path_inside(out, f"fold{r.fold}")
        after = _write_fold(r, cands, cases, args, fold_dir, _bootstrap(args, r),
                            {"model": os.path.abspath(model), "score_mode": args.score_mode,
                             "training_folds": red.provenance["training_folds"]})
        fold_dirs.append(fold_dir)
        rows.append(_row(f"fold{r.fold}", after["num_cases"], after["num_lesions"], len(cands),
                         r.froc, after))
        results.append({"fold": r.fold, "hits": int(y.sum()), "candidates": len(cands),
                        "before": {k: r.froc[k] for k in ("sensitivity_at", "cpm")},
                        "after": {k: after[k] for k in ("sensitivity_at", "cpm")},
                        "training_folds": red.provenance["training_folds"],
                        "num_training_cases": len(red.provenance["training_case_ids"])})
        all_after += cands
        all_before += r.candidates
        all_gt += [cases[c] for c in r.case_ids]
    boot = _bootstrap(args, runs[0])
    gt_path = os.path.join(args.data, "cases.json")
    agg_after = evaluate_fold_dirs(fold_dirs, ground_truth=gt_path, bootstrap=boot, seed=args.seed)
    agg_before = evaluate_fold_dirs(dirs, ground_truth=gt_path, bootstrap=boot, seed=args.seed)
    write_json_atomic(os.path.join(out, "froc_folds.json"), agg_after, indent=1)
    save_froc(agg_after["pooled"], path_inside(out, "pooled"))
    pb, pa = agg_before["pooled"], agg_after["pooled"]
    rows.append(_row("pooled", pa["num_cases"], pa["num_lesions"], len(all_after), pb, pa))
    mean_row = ["mean ± sd", "", "", ""]
    for key in ("1", "3.4"):
        for agg in (agg_before, agg_after):
            mean_row.append(format_mean_sd(agg["mean"]["sensitivity_at"][key],
                                           agg["sd"]["sensitivity_at"][key]))
    mean_row += [format_mean_sd(a["mean"]["cpm"], a["sd"]["cpm"]) for a in (agg_before, agg_after)]
    rows.append(mean_row)
    cmp = compare_froc(all_after, all_before, all_gt, bootstrap=max(boot, 1), seed=args.seed,
                       **params)
    cmp["inputs"] = {"a": "reduced (" + os.path.abspath(out) + ")", "b": os.path.abspath(args.cv)}
    write_json_atomic(os.path.join(out, "compare.json"), cmp, indent=1)
    line = "A = reduced, B = detector: " + format_compare_line(cmp)
    table = markdown_table(_HEADERS, rows, ["left"] + ["right"] * (len(_HEADERS) - 1))
    text = (f"False-positive reducer, out of fold ({len(runs)} folds, {args.score_mode}, "
            f"{args.trees} trees, features v{FEATURE_VERSION})\n\n{table}\n\n{line}\n")
    write_atomic(os.path.join(out, "reduce_fp.md"), lambda f: f.write(text))
    write_json_atomic(os.path.join(out, "summary.json"), {
        "command": command, "folds": results, "compare": cmp["difference"],
        "pooled_before": {k: pb[k] for k in ("sensitivity_at", "cpm", "cpm_interp")},
        "pooled_after": {k: pa[k] for k in ("sensitivity_at", "cpm", "cpm_interp")},
        "feature_names": names}, indent=1)
    return text


def _model_paths(path: str) -> List[str]:
    if os.path.isdir(path):
        paths = sorted(os.path.join(path, n) for n in os.listdir(path)
                       if n.endswith(".txt") and not n.startswith("."))
        if not paths:
            raise ReductionError(f"--apply {path} holds no reducer model (*.txt)")
        return paths
    return [path]


def run_apply(args, argv: Sequence[str]) -> str:
    cases = {c["case_id"]: c for c in load_cases_json(os.path.join(args.data, "cases.json"))}
    reducers = [load_reducer(p) for p in _model_paths(args.apply)]
    names = reducers[0].feature_names
    for red, p in zip(reducers, _model_paths(args.apply)):
        if red.feature_names != names:
            raise ReductionError(f"{p}: its features differ from the other models'")
    run = load_fold_run(args.eval)
    for red, p in zip(reducers, _model_paths(args.apply)):
        red.check_unseen(run.case_ids, where=p)  # before any feature work
    out = _check_out(args.out, [args.eval])
    prov = reducers[0].provenance
    num_post = sum(n.startswith("enh_") for n in names)
    mask_source = args.masks or prov.get("mask_source", "auto")
    kinetics = bool(prov.get("kinetics", True)) and not args.no_kinetics
    info = fold_features(run, cases, args.data, num_post, path_inside(out, "features.npz"),
                         mask_source, kinetics)
    scores = np.mean([red.predict(run.x, run.row_case_ids, run.arrays.scores, args.score_mode,
                                  where=p)
                      for red, p in zip(reducers, _model_paths(args.apply))], axis=0)
    cands = _rescored(run, scores)
    after = _write_fold(run, cands, cases, args, out, _bootstrap(args, run),
                        {"models": [os.path.abspath(p) for p in _model_paths(args.apply)],
                         "score_mode": args.score_mode, "mask_sources": info["mask_sources"]})
    text = markdown_table(_HEADERS, [_row(os.path.basename(os.path.normpath(args.eval)),
                                          after["num_cases"], after["num_lesions"], len(cands),
                                          run.froc, after)],
                          ["left"] + ["right"] * (len(_HEADERS) - 1))
    if after["num_lesions"]:
        gt = [cases[c] for c in run.case_ids]
        cmp = compare_froc(cands, run.candidates, gt, bootstrap=max(_bootstrap(args, run), 1),
                           seed=args.seed, **run.froc_params())
        write_json_atomic(os.path.join(out, "compare.json"), cmp, indent=1)
        text += "\n\nA = reduced, B = detector: " + format_compare_line(cmp)
    write_atomic(os.path.join(out, "reduce_fp.md"), lambda f: f.write(text + "\n"))
    return text + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    setup_tool_logging(logging.INFO)
    try:
        if args.apply:
            text = run_apply(args, argv)
        else:
            text = run_final(args, argv) if args.final else run_cv(args, argv)
    except (ValueError, OSError) as e:  # ReductionError, FROCInputError, CohortError
        sys.stderr.write(f"error: {e}\n")
        return 2
    except KeyError as e:
        sys.stderr.write(f"error: missing key {e}\n")
        return 2
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
