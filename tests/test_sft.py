import json

from engine.model import Mu2ForConditionalGeneration
from tests.helpers import tiny_checkpoint, tiny_volume


def test_sft_cli_trains_from_a_manifest(tmp_path):
    import SimpleITK as sitk

    from training.sft import main

    ckpt = tiny_checkpoint(tmp_path / "tiny")
    rows = []
    for i in range(2):
        path = tmp_path / f"ct{i}.nii.gz"
        sitk.WriteImage(tiny_volume(seed=i).to_sitk(), str(path))
        rows.append({"volume": path.name, "answer": "FINDINGS: no nodule . IMPRESSION: normal ."})
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "sft"
    assert main(["--data", str(manifest), "--model", str(ckpt), "--out", str(out), "--max_steps", "2",
                 "--learning_rate", "1e-3", "--freeze-vision"]) == 0
    before = Mu2ForConditionalGeneration.from_pretrained(ckpt)
    after = Mu2ForConditionalGeneration.from_pretrained(out)
    sb, sa = before.state_dict(), after.state_dict()
    assert all((sb[k] == sa[k]).all() for k in sb if k.startswith("model.vision_tower."))  # frozen
    assert any(not (sb[k] == sa[k]).all() for k in sb if k.startswith("model.language_model."))


def test_sft_cli_refuses_a_bad_manifest(tmp_path, capsys):
    from training.sft import main

    ckpt = tiny_checkpoint(tmp_path / "tiny")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"volume": "x.nii.gz"}\n')
    assert main(["--data", str(bad), "--model", str(ckpt), "--out", str(tmp_path / "o")]) == 2
    assert "row 1" in capsys.readouterr().err
