"""``mu2 info PATH``: what Mu2 reads from a CT (geometry, HU range, warnings), without PHI.

Wired into the ``mu2`` command by ``engine.cli`` through :func:`add_info_parser`.
"""

from __future__ import annotations

import argparse
import json
import sys

from engine.errors import Mu2Error


def add_info_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``info`` on an ``argparse`` sub-parser collection; returns the new parser."""
    p = subparsers.add_parser(
        "info",
        help="describe a CT volume (DICOM folder/file, NIfTI, NRRD, MHA, M3D .npy) without patient data",
        description="Print the geometry, HU range, pseudonymous case id and loader warnings of a CT volume.",
    )
    p.add_argument("path", help="DICOM folder or file, .nii/.nii.gz, .nrrd, .mha/.mhd or M3D .npy")
    p.add_argument("--series", help="DICOM folders with several series: the series key (s-…), number or UID")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--list-series", action="store_true", help="list the image series found (DICOM only)")
    p.set_defaults(func=run_info)
    return p


def _text(summary: dict) -> str:
    shape = "×".join(str(s) for s in summary["shape"])
    spacing = " × ".join(f"{s:.3g}" for s in summary["spacing"])
    lines = [
        f"case id      {summary['case_id']}",
        f"modality     {summary['modality']}"
        + ("  (M3D-prepared, values in [0, 1])" if summary["prepared"] else ""),
        f"series       {summary['series_description'] or '-'}",
        f"voxels       {shape} (z, y, x)",
        f"spacing      {spacing} mm (z, y, x)",
        "origin       " + ", ".join(f"{o:.2f}" for o in summary["origin"]) + " mm (LPS)",
        f"values       {summary['hu_min']:.0f} … {summary['hu_max']:.0f}"
        + ("" if summary["prepared"] else " HU"),
    ]
    lines += [f"warning      {w}" for w in summary["warnings"]]
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    """Run ``mu2 info``; returns the exit status (2 with one ``mu2:`` line on stderr for unusable input)."""
    from engine.volume import load_volume

    try:
        if getattr(args, "list_series", False):
            from engine.dicom_io import list_series

            infos = list_series(args.path)
            if args.json:
                rows = [
                    {
                        "key": i.key,
                        "number": i.number,
                        "description": i.description,
                        "modality": i.modality,
                        "images": i.n_frames,
                        "orientation": i.orientation,
                        "localizer": i.localizer,
                    }
                    for i in infos
                ]
                print(json.dumps({"series": rows}))
            else:
                print("\n".join(i.label() for i in infos) or "no DICOM image series found")
            return 0
        volume = load_volume(args.path, series=getattr(args, "series", None))
    except Mu2Error as err:
        print(f"mu2: {err}", file=sys.stderr)
        return 2
    summary = volume.summary()
    print(json.dumps(summary) if args.json else _text(summary))
    return 0
