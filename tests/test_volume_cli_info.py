"""``mu2 info``: one JSON object on success, one ``mu2:`` line and status 2 on unusable input."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import SimpleITK as sitk

from engine.cli_info import add_info_parser, run_info


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mu2")
    add_info_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["info", *argv])
    return args.func(args)


@pytest.fixture
def nifti(tmp_path):
    img = sitk.GetImageFromArray(np.full((6, 12, 10), -1000, np.int16))
    img.SetSpacing((0.8, 0.8, 2.5))
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(img, str(path))
    return path


def test_json_summary(nifti, capsys):
    assert run([str(nifti), "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert data["shape"] == [6, 12, 10] and data["spacing"] == pytest.approx([2.5, 0.8, 0.8])
    assert data["case_id"].startswith("c-") and out.count("\n") == 1


def test_text_summary(nifti, capsys):
    assert run([str(nifti)]) == 0
    assert "6×12×10" in capsys.readouterr().out


@pytest.mark.parametrize("make", ["missing", "text", "nan", "slice"])
def test_unusable_input_one_line_status_2(tmp_path, capsys, make):
    path = tmp_path / "x.nii.gz"
    if make == "text":
        path = tmp_path / "x.txt"
        path.write_text("not an image")
    elif make == "nan":
        path = tmp_path / "x.mha"  # ITK's NIfTI reader turns NaN into 0; MetaImage keeps it
        sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 8, 8), np.nan, np.float32)), str(path))
    elif make == "slice":
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.int16)), str(path))
    assert run([str(path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mu2: ")
    assert str(tmp_path) not in lines[0]  # paths may name the patient


def test_list_series(realdata, capsys):
    assert (
        run([str(realdata / "ct/dicom_edge_cases/pydicom_dicomdir_mixed_series"), "--list-series", "--json"])
        == 0
    )
    rows = json.loads(capsys.readouterr().out)["series"]
    assert len(rows) == 3 and {r["localizer"] for r in rows} == {True, False}
    assert all(r["key"].startswith("s-") for r in rows)


def test_run_info_is_callable_directly(nifti, capsys):
    ns = argparse.Namespace(path=str(nifti), series=None, json=True, list_series=False)
    assert run_info(ns) == 0
    assert json.loads(capsys.readouterr().out)["modality"] == "CT"
