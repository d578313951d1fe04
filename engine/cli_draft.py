"""``mu2 draft`` (one study or many) and ``mu2 export``."""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path

from engine.errors import Mu2Error, Mu2InputError

log = logging.getLogger(__name__)


def add_draft_parser(sub) -> None:
    p = sub.add_parser("draft", help="draft a report + token heatmap for one study, a folder of studies, or a list file")
    p.add_argument("paths", nargs="+", metavar="PATH", help="a CT (DICOM folder/file, NIfTI, NRRD, MHA, .npy), a folder of studies, or a .txt list")
    p.add_argument("--weights", help="checkpoint folder (default: the bundled demo model)")
    p.add_argument("--question", help="question for the model (default: the checkpoint's)")
    p.add_argument("--out", default="mu2-out", help="output folder (one sub-folder per study when several)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--seed", type=int, help="sample with this seed instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--series", help="SeriesInstanceUID when a folder holds several series")
    p.add_argument("--compile", action="store_true", help="static KV cache + torch.compile decoding (GPU)")
    p.set_defaults(func=run_draft)


def expand_inputs(paths: list[str]) -> list[Path]:
    """One study per path; a ``.txt`` lists paths, a folder of study folders/files expands to its entries."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.suffix == ".txt" and p.is_file():
            out += [Path(line.strip()) for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]
        elif p.is_dir() and _is_batch_folder(p):
            out += sorted(c for c in p.iterdir() if not c.name.startswith("."))
        else:
            out.append(p)
    return out


def _is_batch_folder(folder: Path) -> bool:
    # A folder of studies holds sub-folders or volume files, and no DICOM slices of its own.
    entries = [c for c in folder.iterdir() if not c.name.startswith(".")]
    if not entries:
        return False
    vol_ext = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".npy")
    has_dicom = any(c.is_file() and not c.name.endswith(vol_ext) for c in entries)
    return not has_dicom and len(entries) > 0 and (any(c.is_dir() for c in entries) or len(entries) > 1)


def run_draft(args) -> int:
    from tqdm import tqdm

    from engine.draft import Drafter, Sampling
    from engine.volume import load_volume

    inputs = expand_inputs(args.paths)
    sampling = Sampling(do_sample=True, temperature=args.temperature, top_p=args.top_p, seed=args.seed) if args.seed is not None else Sampling()
    for p in inputs:
        if not p.exists():
            raise Mu2InputError(f"{p} does not exist")
    drafter = Drafter.from_pretrained(args.weights, device=args.device, dtype=args.dtype, compile_decode=args.compile)
    out_root = Path(args.out)
    failures = 0
    many = len(inputs) > 1
    bar = tqdm(inputs, desc="drafting", unit="study", file=sys.stderr, disable=not many)
    for i, path in enumerate(bar):
        out = out_root / f"{i:04d}-{_safe_name(path)}" if many else out_root
        try:
            volume = load_volume(path, series=args.series)
            stages = tqdm(total=None, desc="draft", file=sys.stderr, disable=many, bar_format="{desc}: {n} tokens [{elapsed}]")

            def on_stage(name, _s=stages):
                _s.set_description(name)

            def on_token(_t, _s=stages):
                _s.update(1)

            draft = drafter.draft(volume, args.question, args.max_new_tokens, sampling, on_token=on_token,
                                  cancel=threading.Event(), on_stage=on_stage)
            stages.close()
            write_outputs(draft, volume, out)
        except Mu2Error as err:
            failures += 1
            if not many:
                raise
            print(f"mu2: {path}: {err}", file=sys.stderr)
    if many:
        print(f"mu2: drafted {len(inputs) - failures} of {len(inputs)} studies into {out_root}", file=sys.stderr)
    return 2 if failures == len(inputs) else 0


def _safe_name(path: Path) -> str:
    # File names can carry patient names; the output folder uses only a short hash of it.
    import hashlib

    return hashlib.sha256(str(path).encode()).hexdigest()[:10]


def write_outputs(draft, volume, out: Path) -> None:
    from engine.export import export_heatmap_nifti

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.txt").write_text(draft.text + "\n")
    (out / "report.json").write_text(json.dumps(draft.to_json(), indent=2, ensure_ascii=False) + "\n")
    export_heatmap_nifti(draft.heatmap, volume, out / "heatmap.nii.gz")
    print(out / "report.txt")


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="export a report.json as text, JSON or DICOM SR")
    p.add_argument("report", help="report.json written by `mu2 draft` or the widget")
    p.add_argument("--format", choices=["txt", "json", "sr"], default="sr")
    p.add_argument("--volume", help="the CT the report belongs to (for the SR's geometry-free references)")
    p.add_argument("--out", required=True)
    p.add_argument("--verified", action="store_true", help="mark the SR as verified (the radiologist accepted it)")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    from engine import export

    src = Path(args.report)
    try:
        data = json.loads(src.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise Mu2InputError(f"{src} is not a readable report.json: {err}") from err
    text = data.get("final_text") or data.get("text")
    if not text:
        raise Mu2InputError(f"{src} holds no report text")
    out = Path(args.out)
    if args.format == "txt":
        out.write_text(text + "\n")
    elif args.format == "json":
        out.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    else:
        volume = None
        if args.volume:
            from engine.volume import load_volume

            volume = load_volume(args.volume)
        export.export_dicom_sr(text, volume, out, verified=args.verified)
    print(out)
    return 0
