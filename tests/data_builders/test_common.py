"""What the real-dataset builders share: slice order, resizing, sharding."""
import numpy as np
import pytest

from data_builders import common
from ich_jax.data import resample

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def header(sop, z, orientation=AXIAL, thickness=float("nan")):
  return common.SliceHeader(path=f"/d/{sop}.dcm", sop_uid=sop, patient_id="P", study_uid="st", series_uid="se",
                            position=(0.0, 0.0, z), orientation=orientation, pixel_spacing=(0.5, 0.5), rows=8, cols=8,
                            slice_thickness=thickness, window=(40.0, 80.0))


def test_order_rejects_a_foreign_orientation_keeps_duplicates_and_notes_varying_gaps():
  coronal = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
  slices = [header("c", 10.0), header("a", 0.0), header("x", 5.0, orientation=coronal), header("b", 5.0),
            header("a2", 0.0), header("d", 20.0)]
  o = common.order_slices(slices)
  assert [s.sop_uid for s in o.slices] == ["a", "a2", "b", "c", "d"]
  np.testing.assert_allclose(o.z, [0, 0, 5, 10, 20])
  assert [p for p, _ in o.rejected] == ["/d/x.dcm"] and "differs from the series'" in o.rejected[0][1]
  notes = " | ".join(m for _, m in o.notes)
  assert "duplicate slice position z=0.000 mm" in notes and "varying slice gaps 5.000–10.000 mm" in notes
  assert o.gap == 5.0 and o.thickness == 5.0      # no SliceThickness: the gap stands in
  assert common.order_slices([header("a", 0.0, thickness=2.0), header("b", 1.0, thickness=2.0)]).thickness == 2.0


def test_fit_pads_non_square_and_resizes_any_factor():
  img = np.arange(48 * 64, dtype=np.float32).reshape(48, 64)
  fit = common.Fit(img.shape, 32)
  out = fit.image(img)
  assert out.shape == (32, 32) and out.dtype == np.int16
  assert fit.offset == (8, 0) and fit.scale == 0.5
  assert (out[:4] == common.AIR_HU).all()                      # padding is air
  padded = np.full((64, 64), common.AIR_HU, np.float32)
  padded[8:56] = img
  np.testing.assert_array_equal(out, np.rint(resample.area_downsample(padded, 32)).astype(np.int16))
  np.testing.assert_allclose(fit.spacing((0.4, 0.5)), [0.8, 1.0])
  assert fit.point(0, 0) == (4.0, 0.0)
  # Not an integer factor, and upsampling: linear; masks stay "any".
  mask = np.zeros((48, 48), bool)
  mask[10, 20] = True
  assert common.Fit(mask.shape, 32).mask(mask).sum() >= 1
  assert common.Fit((16, 16), 32).image(np.full((16, 16), 40.0)).tolist() == np.full((32, 32), 40).tolist()


def test_partition_keeps_order_and_makes_several_shards():
  groups = common.partition([1.0] * 10, max_weight=100.0, min_parts=4)
  assert len(groups) == 4 and [i for g in groups for i in g] == list(range(10))
  assert common.partition([5.0, 5.0, 5.0], max_weight=6.0, min_parts=1) == [[0], [1], [2]]
  assert common.partition([], 1.0, 4) == []
  assert len(common.partition([1.0], 1.0, 4)) == 1


@pytest.mark.parametrize("level", ["slice", "scan"])
def test_standard_configs(level):
  from data_builders.rsna_ich import rsna_ich
  names = {c.name: (c.level, c.resolution) for c in rsna_ich.RsnaIch.BUILDER_CONFIGS}
  assert names[f"{level}s"] == (level, 512) and names[f"{level}s256"] == (level, 256)


@pytest.mark.parametrize("name", ["synthetic_ich", "rsna_ich", "physionet_ct_ich", "cq500"])
def test_pixel_features_are_stored_as_raw_bytes(name, tmp_path):
  # TFDS's default (int64 varint lists) makes every record ~3x larger and reads ~2x
  # slower (docs/PERFORMANCE.md, Input pipeline); every config must use common.pixels.
  from ich_jax.data import datasets
  cls = datasets.builder_class(name)
  for config in cls.BUILDER_CONFIGS:
    features = cls(data_dir=str(tmp_path), config=config.name, file_format="array_record").info.features
    stored = [k for k in ("image", "mask", "volume") if k in features]
    assert stored, config.name
    for key in stored:
      assert features[key].to_json_content().encoding == "bytes", (name, config.name, key)
    # Decoding a serialized example gives the int16 / uint8 values back, exactly.
    if "image" in stored:
      r = features["image"].shape[0]
      hu = (np.arange(r * r) % 4000 - 1024).astype(np.int16).reshape(r, r)
      encoded = features["image"].encode_example(hu)
      assert isinstance(encoded, bytes) and len(encoded) == hu.nbytes
      np.testing.assert_array_equal(features["image"].decode_example_np(encoded), hu)
