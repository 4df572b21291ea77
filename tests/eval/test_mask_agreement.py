"""Masks against a reference that is not hemorrhage: scored on the slices where the reference is not empty."""
import numpy as np
import pytest

from ich_jax.eval import mask_agreement


def test_only_slices_with_a_reference_are_scored_and_the_table_names_them():
  ref = np.zeros((3, 4, 4), np.uint8)
  ref[0, :2] = 1                      # 8 pixels
  ref[1, :, :1] = 1                   # 4 pixels
  pred = ref.copy()
  pred[1] = 0                         # missed
  pred[2, 0, 0] = 1                   # a false positive where the reference is empty: not scored
  m = mask_agreement.mask_agreement({"brain_mask": ref, "pred_mask": pred}, "brain_mask")
  assert m["n_slices"] == 2 and m["n_slices_total"] == 3 and m["reference"] == "brain_mask"
  assert m["dice"]["mean"] == pytest.approx(0.5) and m["dice"]["min"] == 0.0 and m["jaccard"]["max"] == 1.0
  text = mask_agreement.format_mask_agreement(m, title="Skull strip")
  assert text.startswith("# Skull strip") and "on the 2 of 3 slices" in text and "| dice | 0.500 |" in text
  with pytest.raises(ValueError, match="'pred_mask' and 'mask'"):
    mask_agreement.mask_agreement({"brain_mask": ref}, "mask")
