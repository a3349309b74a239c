"""A cell is evaluated once: the fit loop's validation at the final step (``max_steps`` a multiple
of ``val_every``) is the cell's evaluation, with the same numbers as validating ``last.ckpt``
again; only where the fit loop did not validate the final weights does the cell validate them."""

from __future__ import annotations

import json

import pytest

from experiments.checkpoints import ResultsTrainer
from experiments.recipe import Recipe
from experiments.runner import main
from experiments.spec import Ablation, Variant

TINY = Ablation(
    name="finalval", title="final validation", synthetic_task="thin", paper_data="voc", paper=Recipe(),
    variants={"OS 16": Variant("deeplab_v3", {"backbone": "resnet50", "output_stride": 16})},
    smoke={"width": 0.0625, "data": {"num_train": 8, "num_val": 4, "image_size": 64, "global_batch": 2},
           "trainer": {"max_steps": 6, "val_every": 6, "checkpoint_every": 6}},
)


@pytest.fixture
def validations(monkeypatch):
    """The number of separate ``trainer.validate`` calls (not the fit loop's own validations)."""
    calls = []
    original = ResultsTrainer.validate

    def counted(self, *args, **kwargs):
        calls.append(kwargs.get("ckpt_path"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ResultsTrainer, "validate", counted)
    return calls


@pytest.mark.slow
def test_the_last_validation_of_training_is_the_evaluation(tmp_path, validations, capsys):
    args = ["--out", str(tmp_path), "--quiet", "--seeds", "0", "--no-figures"]
    main(TINY, args)
    cell = tmp_path / "finalval" / "synthetic_thin-smoke" / "OS 16" / "seed0"
    first = json.loads((cell / "metrics.json").read_text())
    assert validations == []  # validated once, inside the fit loop, at step 6
    assert first["steps"] == 6 and first["eval_time_s"] is not None and first["train_time_s"] > 0
    assert (cell / "per_image_val.npz").is_file()
    # its final weights validated again (a rerun after a crash in the evaluation): the same numbers
    (cell / "metrics.json").unlink()
    main(TINY, args)
    assert validations == [str(cell / "checkpoints" / "last.ckpt")]
    again = json.loads((cell / "metrics.json").read_text())
    assert again["val"] == first["val"]
    # val_every that does not divide max_steps: the last validation saw step 4's weights
    validations.clear()
    main(TINY, ["--out", str(tmp_path / "other"), "--quiet", "--seeds", "0", "--no-figures",
                "--set", "trainer.val_every=4"])
    assert len(validations) == 1
    other = json.loads((tmp_path / "other" / "finalval" / "synthetic_thin-smoke" / "OS 16" / "seed0" / "metrics.json").read_text())
    assert other["steps"] == 6 and other["val"] == first["val"]  # the same training; evaluated at step 6
