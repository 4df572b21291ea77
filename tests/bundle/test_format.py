"""The bundle folder: a tampered, truncated or incomplete bundle is refused naming the file; every file a member
loads is listed with its hash; the identity `verify` prints pins a bundle."""
import json
import shutil

import pytest

from ich_jax import bundle as bundle_lib
from ich_jax.bundle import __main__ as bundle_cli
from ich_jax.bundle import format as bundle_format
from tests.fake_runs import edited_bundle


def test_tampered_or_incomplete_bundles_are_refused(runs, tmp_path):
  src = runs["root"] / "cls_bundle"
  params = next((src / "params").glob("*.npz")).relative_to(src)
  bad = tmp_path / "bytes"
  shutil.copytree(src, bad)
  data = bytearray((bad / params).read_bytes())
  data[-200] ^= 0xFF
  (bad / params).write_bytes(bytes(data))
  with pytest.raises(bundle_lib.BundleError, match=f"{params.name}: SHA-256 differs"):
    bundle_lib.load(bad)
  edited = tmp_path / "edited"
  shutil.copytree(src, edited)
  manifest = json.loads((edited / "manifest.json").read_text())
  manifest["threshold"] = 0.01
  (edited / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(bundle_lib.BundleError, match="manifest's hash does not match"):
    bundle_lib.load(edited)
  partial = tmp_path / "partial"
  shutil.copytree(src, partial)
  (partial / params).unlink()
  with pytest.raises(bundle_lib.BundleError, match=f"{params} is missing"):
    bundle_lib.load(partial)
  with pytest.raises(bundle_lib.BundleError, match="not a model bundle"):
    bundle_lib.load(tmp_path)
  assert bundle_cli.main(["verify", str(src)]) == 0 and bundle_cli.main(["verify", str(bad)]) == 1


def test_every_loaded_file_is_listed_and_the_bundle_identity_can_be_pinned(runs, tmp_path, capsys):
  src = runs["root"] / "cls_bundle"
  identity = bundle_lib.manifest_sha256(src)
  assert bundle_cli.main(["verify", str(src)]) == 0
  assert f"sha256 {identity}" in capsys.readouterr().out
  assert runs["cls_bundle"].hash == identity
  # An edit that recomputes the manifest's internal hash loads as a bundle, but not as the verified one.
  edited = edited_bundle(src, tmp_path / "edited", threshold=0.01)
  assert bundle_lib.read_manifest(edited)["threshold"] == 0.01
  with pytest.raises(bundle_lib.BundleError, match=f"is not the expected {identity}"):
    bundle_lib.load(edited, expected_sha256=identity)
  assert bundle_cli.main(["verify", str(edited), "--expect-sha256", identity]) == 1
  # A member whose params file the manifest does not list with a hash: refused, even if consistent otherwise.
  unlisted = tmp_path / "unlisted"
  shutil.copytree(src, unlisted)
  manifest = json.loads((unlisted / "manifest.json").read_text())
  params = manifest["members"][0]["params"]
  del manifest["files"][params]
  manifest["hash"] = bundle_format.manifest_hash(manifest)
  (unlisted / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(bundle_lib.BundleError, match=f"loads '{params}', which the manifest's `files` does not list"):
    bundle_lib.load(unlisted)


def test_a_mean_member_counts_as_its_inputs_role_and_never_stands_for_a_mask_or_gradcam(runs):
  """Seed 003's fold means: a sequence member may read a mean of classifiers; a mean over members of two roles,
  over a later member or over nothing is refused, and outputs that need a model (mask, Grad-CAM) cannot name one."""
  def model(name, role, inputs=()):
    return {"name": name, "role": role, "inputs": list(inputs)}

  probs = {"probabilities": {"combine": "mean", "members": ["seq"]}}
  folds = [model("cnn0", "classifier"), model("cnn1", "classifier")]
  cnn = bundle_format.mean_entry("cnn", ["cnn0", "cnn1"])
  assert cnn["model"] is None and cnn["params"] is None
  bundle_format.check_outputs(folds + [cnn, model("seq", "sequence", ["cnn"])], probs)
  with pytest.raises(bundle_lib.BundleError, match=r"averages \['cnn0', 'seg'\]: it needs earlier members of one "):
    bundle_format.check_outputs([folds[0], model("seg", "segmentation"),
                                 bundle_format.mean_entry("cnn", ["cnn0", "seg"]), model("seq", "sequence", ["cnn"])],
                                probs)
  with pytest.raises(bundle_lib.BundleError, match="needs earlier members of one role"):
    bundle_format.check_outputs([bundle_format.mean_entry("cnn", ["cnn0"])] + folds, probs)
  with pytest.raises(bundle_lib.BundleError, match="a mean needs inputs"):
    bundle_format.mean_entry("cnn", [])
  with pytest.raises(bundle_lib.BundleError, match="outputs.gradcam='cnn' is not a classifier member"):
    bundle_format.check_outputs(folds + [cnn], {"probabilities": {"combine": "mean", "members": ["cnn"]},
                                                "gradcam": "cnn"})
  segs = [model("s0", "segmentation"), model("s1", "segmentation"), bundle_format.mean_entry("s", ["s0", "s1"])]
  with pytest.raises(bundle_lib.BundleError, match="outputs.mask='s' is not a segmentation"):
    bundle_format.check_outputs(segs, {"probabilities": {"combine": "mean", "members": ["s"]}, "mask": "s"})
  # Version 2 only where a bundle has a mean member: code that reads version 1 still reads the others.
  assert bundle_lib.read_manifest(runs["root"] / "cls_bundle")["version"] == 1
