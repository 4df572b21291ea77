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
