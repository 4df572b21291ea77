"""The engine on a loaded bundle: what its members are and give, and a non-finite answer refused by name."""
import numpy as np
import pytest

from ich_jax import bundle as bundle_lib
from tests.fake_runs import make_phantom


def test_a_bundle_describes_its_members_and_what_it_predicts(runs):
  pair, cls = runs["pair"], runs["cls_bundle"]
  assert [(m["name"], m["role"], m["window"]) for m in pair.describe()] == [("0.cls", "classifier", None),
                                                                            ("1.seg", "segmentation", None)]
  assert pair.has_mask and not pair.mask_subtypes and pair.predicts_subtypes
  assert not cls.has_mask and cls.outputs["gradcam"] == "cls" and cls.hash == bundle_lib.manifest_sha256(cls.directory)


def test_a_member_that_predicts_a_non_finite_probability_is_named_with_its_slice(runs, monkeypatch):
  pair = runs["pair"]
  p = make_phantom(19)
  images = pair.preprocess([{"image": p.hu[i], "series_id": "s", "slice_index": i} for i in range(len(p.hu))])

  def outputs(member, batch):
    n = len(next(iter(batch.values())))
    prob = np.full((n, 6), 0.5, np.float32)
    prob[2, 3] = np.nan if member.role == "segmentation" else 0.5
    return {"probabilities": prob, "pred_mask": np.zeros((n, 32, 32), np.uint8)}

  monkeypatch.setattr(pair, "slice_outputs", outputs)
  with pytest.raises(bundle_lib.BundleError, match=r"member '1\.seg' predicted a non-finite probability at slice 2"):
    pair.predict(images, p.z_positions_mm, batch_size=8)
