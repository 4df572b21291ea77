"""Tests for ich_jax.data.dicom: write a series, read it back, fail clearly."""

import pathlib
import shutil

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.pixels import apply_modality_lut, get_encoder

from ich_jax.data import dicom

SHAPE = (6, 12, 10)  # [S, H, W]: non-square, so a row/column mix-up shows


def _volume(seed=0, shape=SHAPE, lo=-1024, hi=2000):
    return np.random.default_rng(seed).uniform(lo, hi, shape)


def _nested_random(rng):
    """Random names, every other slice in a sub-folder: names and folders say nothing."""
    def name(i, sop_uid):
        stem = f"{rng.integers(2**32):08x}"
        return f"sub/deeper/{stem}" if i % 2 else f"{stem}.dcm"
    return name


def test_round_trip_random_names_nested_folders(tmp_path):
    hu = _volume()
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    paths = dicom.write_series(
        hu, (2.5, 0.45, 0.5), tmp_path, slice_thickness=5.0,  # overlapping reconstruction
        origin=(-30.0, -40.0, 12.0), patient_id="P7", study_uid=study, series_uid=series,
        file_names=_nested_random(np.random.default_rng(3)))
    (tmp_path / "README.txt").write_text("not a scan")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    shutil.copy(pydicom.data.get_testdata_file("DICOMDIR"), tmp_path / "DICOMDIR")  # an index, not a slice

    s = dicom.load_series(tmp_path)

    assert s.hu.dtype == np.int16 and s.hu.shape == SHAPE
    np.testing.assert_array_equal(s.hu, np.rint(hu))
    np.testing.assert_allclose(s.z_positions, 12.0 + 2.5 * np.arange(6))
    assert np.all(np.diff(s.z_positions) > 0)
    assert s.spacing == pytest.approx((2.5, 0.45, 0.5))  # the gap from positions, not SliceThickness
    assert s.slice_thickness == 5.0
    assert (s.study_uid, s.series_uid, s.patient_id) == (study, series, "P7")
    written = {pathlib.Path(p): pydicom.dcmread(p).SOPInstanceUID for p in paths}
    assert s.files == paths and s.sop_uids == [written[p] for p in paths]
    assert len(set(s.sop_uids)) == 6
    np.testing.assert_allclose(s.positions[0], (-30.0, -40.0, 12.0))
    np.testing.assert_allclose(s.orientation, (1, 0, 0, 0, 1, 0))


def test_written_header_is_a_valid_ct_slice(tmp_path):
    path = dicom.write_series(_volume(), (5.0, 0.5, 0.5), tmp_path)[2]
    ds = pydicom.dcmread(path)
    assert ds.preamble is not None and ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.Modality == "CT" and ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.InstanceNumber == 3 and ds.BodyPartExamined == "HEAD"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 16, 15, 0)
    assert (ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType) == (1, -1024, "HU")
    assert (ds.WindowCenter, ds.WindowWidth) == (40, 80)
    assert float(ds.SliceLocation) == 10.0 and [float(v) for v in ds.ImagePositionPatient] == [0, 0, 10]
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"] and ds.ConvolutionKernel == "STANDARD"
    assert not hasattr(dicom.read_header(path), "PixelData")


def test_same_arguments_write_the_same_bytes(tmp_path):
    kwargs = dict(study_uid="1.2.3.4", series_uid="1.2.3.4.5", file_names="random", rng=7)
    a = dicom.write_series(_volume(), (5.0, 0.5, 0.5), tmp_path / "a", **kwargs)
    b = dicom.write_series(_volume(), (5.0, 0.5, 0.5), tmp_path / "b", **kwargs)
    assert [p.name for p in a] == [p.name for p in b]
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(a, b))


def test_rotated_orientation_sorts_along_normal(tmp_path):
    # Row and column directions rotated about x and y, so the normal is oblique
    # and neither the file names nor the raw z coordinate give the order.
    a, b = np.deg2rad(17.0), np.deg2rad(-9.0)
    rot = (np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
           @ np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]]))
    orientation = np.concatenate([rot[:, 0], rot[:, 1]])
    hu = _volume(1)
    z = np.array([3.0, -2.0, 8.0, 0.5, 13.0, 5.5])  # written out of order
    dicom.write_series(hu, (2.5, 0.5, 0.5), tmp_path, z_positions=z, orientation=orientation,
                       origin=(10.0, -5.0, 40.0), file_names="random", rng=0)

    s = dicom.load_series(tmp_path)

    order = np.argsort(z)
    np.testing.assert_allclose(s.z_positions, z[order], atol=1e-9)
    np.testing.assert_array_equal(s.hu, np.rint(hu[order]))
    assert s.spacing[0] == pytest.approx(2.5)
    normal = np.cross(orientation[:3], orientation[3:])
    np.testing.assert_allclose(s.positions @ normal, s.z_positions, atol=1e-9)
    np.testing.assert_allclose(s.orientation, orientation, atol=1e-12)


def test_decreasing_positions_sorted_ascending(tmp_path):
    hu = _volume(2)
    z = 100.0 - 5.0 * np.arange(6)  # slice 0 on top, written head to foot
    dicom.write_series(hu, (5.0, 0.5, 0.5), tmp_path, z_positions=z)
    s = dicom.load_series(tmp_path)
    np.testing.assert_allclose(s.z_positions, z[::-1])
    np.testing.assert_array_equal(s.hu, np.rint(hu[::-1]))
    assert s.spacing[0] == 5.0
    assert [p.name for p in s.files] == [f"{i:04d}.dcm" for i in range(5, -1, -1)]


def test_slope_and_intercept_are_exact(tmp_path):
    hu = np.rint(_volume(3)) + 0.5 * (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 2)  # half-HU steps
    paths = dicom.write_series(hu, (5.0, 0.5, 0.5), tmp_path,
                               rescale_slope=0.5, rescale_intercept=-1000.0)
    for i, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        assert (ds.RescaleSlope, ds.RescaleIntercept) == (0.5, -1000.0)
        np.testing.assert_array_equal(dicom.to_hu(ds), hu[i])
        assert dicom.to_hu(ds).dtype == np.float32
    s = dicom.load_series(tmp_path)
    np.testing.assert_array_equal(s.hu, np.clip(np.rint(hu), -32768, 32767))


def test_signed_storage_and_12_bit(tmp_path):
    hu = _volume(4, lo=-2000, hi=1500)  # padding below the intercept: signed stored values
    dicom.write_series(hu, (5.0, 0.5, 0.5), tmp_path / "signed")
    ds = pydicom.dcmread(next((tmp_path / "signed").iterdir()))
    assert ds.PixelRepresentation == 1
    np.testing.assert_array_equal(dicom.load_series(tmp_path / "signed").hu, np.rint(hu))

    dicom.write_series(hu, (5.0, 0.5, 0.5), tmp_path / "12bit", bits_stored=12,
                       pixel_representation=0, clip=True)
    ds = pydicom.dcmread(next((tmp_path / "12bit").iterdir()))
    assert (ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (12, 11, 0)
    np.testing.assert_array_equal(dicom.load_series(tmp_path / "12bit").hu,
                                  np.clip(np.rint(hu), -1024, 3071))


def test_12bit_quirk_rule_matches_datasets_md():
    ds = pydicom.Dataset()
    ds.BitsStored, ds.PixelRepresentation, ds.RescaleIntercept = 12, 0, "-99"
    assert dicom.has_12bit_quirk(ds)
    ds.RescaleIntercept = "-1024"
    assert not dicom.has_12bit_quirk(ds)
    ds.RescaleIntercept, ds.PixelRepresentation = "0", 1
    assert not dicom.has_12bit_quirk(ds)
    ds.PixelRepresentation, ds.BitsStored = 0, 16
    assert not dicom.has_12bit_quirk(ds)
    del ds.RescaleIntercept
    ds.BitsStored = 12
    assert not dicom.has_12bit_quirk(ds)


def test_12bit_quirk_is_corrected_for_every_reader(tmp_path):
    # datasets.md (RSNA): stored = (HU + 1000 - 1000) mod 4096, BitsStored 12, unsigned, intercept > -100.
    # The shared reader (prediction, every builder) must give the true HU, not air at ~+3000.
    hu = np.rint(_volume(7, lo=-1000, hi=3000))
    hu[:, 0, 0] = -1000.0  # air in every slice
    stored = np.mod(hu.astype(np.int32), 4096)
    paths = dicom.write_series(stored + 1.0, (5.0, 0.5, 0.5), tmp_path, bits_stored=12,
                               pixel_representation=0, rescale_intercept=1.0)
    s = dicom.load_series(tmp_path)
    np.testing.assert_array_equal(s.hu, hu)
    assert s.hu[:, 0, 0].tolist() == [-1000] * SHAPE[0]
    assert s.notes == ["12-bit intercept quirk corrected on 6 of 6 slices (BitsStored 12, unsigned, "
                       "RescaleIntercept > -100: stored values shifted by +1000 modulo 4096, intercept -1000)"]
    values, rescale = dicom.slice_hu(pydicom.dcmread(paths[0]))
    assert rescale == dicom.Rescale(1.0, -1000.0, quirk_12bit=True)
    np.testing.assert_array_equal(values, hu[0])


def test_missing_rescale_tags_are_refused_unless_an_intercept_is_assumed(tmp_path):
    # An anonymiser that strips the modality LUT of an unsigned series: stored values are HU + 1024.
    hu = np.rint(_volume(8, lo=-1024, hi=2000))
    paths = dicom.write_series(hu, (5.0, 0.5, 0.5), tmp_path, rescale_intercept=-1024.0)
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.RescaleSlope, ds.RescaleIntercept
        ds.save_as(path, enforce_file_format=True)
    first = sorted(paths)[0]
    with pytest.raises(dicom.DicomError, match=f"{first}: missing required tag RescaleSlope and RescaleIntercept "
                                               r"\(Type 1 in the CT Image module"):
        dicom.load_series(tmp_path)
    with pytest.raises(dicom.DicomError, match="missing required tag RescaleSlope and RescaleIntercept"):
        dicom.to_hu(pydicom.dcmread(first))

    s = dicom.load_series(tmp_path, assume_intercept=-1024.0)
    np.testing.assert_array_equal(s.hu, hu)
    assert s.notes == ["RescaleSlope and RescaleIntercept missing on 6 of 6 slices: slope 1 and intercept -1024 "
                       "assumed there (assume_intercept)"]
    # Only the intercept missing: the slice's own slope stays.
    ds = pydicom.dcmread(first)
    ds.RescaleSlope = "2"
    assert dicom.rescale_of(ds, assume_intercept=-1000.0) == dicom.Rescale(2.0, -1000.0, assumed=("RescaleIntercept",))


def test_unrepresentable_hu_raises_naming_the_value(tmp_path):
    hu = np.zeros(SHAPE)
    hu[2, 3, 4] = 5000.0
    with pytest.raises(ValueError, match=r"HU value 5000.0 at index \(2, 3, 4\).*\[-1024.0, 3071.0\]"):
        dicom.write_series(hu, (5.0, 0.5, 0.5), tmp_path, bits_stored=12)
    hu[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"HU value nan at index \(1, 1, 1\)"):
        dicom.write_series(hu, (5.0, 0.5, 0.5), tmp_path)
    assert not list(tmp_path.iterdir())  # checked before anything is written


@pytest.mark.parametrize("syntax", [pydicom.uid.RLELossless, pydicom.uid.JPEG2000Lossless],
                         ids=["rle", "j2k"])
def test_compressed_round_trip(tmp_path, syntax):
    if not get_encoder(syntax).is_available:
        pytest.skip(f"no {syntax.name} encoder here")
    hu = _volume(5, shape=(3, 64, 48), lo=-2000, hi=3000)  # OpenJPEG's 5 levels need ≥ 32 px
    paths = dicom.write_series(hu, (5.0, 0.5, 0.5), tmp_path, transfer_syntax=syntax,
                               file_names="random", rng=5)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    s = dicom.load_series(tmp_path)
    np.testing.assert_array_equal(s.hu, np.rint(hu))
    assert s.sop_uids == [pydicom.dcmread(p).SOPInstanceUID for p in paths]  # compress kept the UIDs


def test_rsna_style_sop_uids(tmp_path):
    uids = [f"ID_{i:09x}" for i in range(6)]
    # Not valid UI values, as in the RSNA release: pydicom warns on write and read.
    with pytest.warns(UserWarning, match="Invalid value for VR UI: 'ID_"):
        dicom.write_series(_volume(), (5.0, 0.5, 0.5), tmp_path, sop_uids=uids,
                           file_names=lambda i, uid: f"{uid}.dcm")
    with pytest.warns(UserWarning, match="Invalid value for VR UI: 'ID_"):
        s = dicom.load_series(tmp_path)
    assert s.sop_uids == uids
    assert sorted(p.name for p in s.files) == sorted(f"{u}.dcm" for u in uids)


# Errors: each names the file or folder, the tag, the value.

def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no scans here")
    with pytest.raises(dicom.DicomError, match=f"no DICOM files in {tmp_path}"):
        dicom.load_series(tmp_path)


def test_corrupt_file_named(tmp_path):
    dicom.write_series(_volume(), (5.0, 0.5, 0.5), tmp_path)
    bad = tmp_path / "garbage.dcm"
    bad.write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(dicom.DicomError, match=f"{bad}: corrupt DICOM"):
        dicom.load_series(tmp_path)


def test_truncated_file_named(tmp_path):
    paths = dicom.write_series(_volume(), (5.0, 0.5, 0.5), tmp_path)
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) - 50])
    with pytest.raises(dicom.DicomError, match=str(paths[3])):
        dicom.load_series(tmp_path)


def test_missing_position_named(tmp_path):
    paths = dicom.write_series(_volume(), (5.0, 0.5, 0.5), tmp_path)
    ds = pydicom.dcmread(paths[4])
    del ds.ImagePositionPatient
    ds.save_as(paths[4], enforce_file_format=True)
    with pytest.raises(dicom.DicomError, match=f"{paths[4]}: missing required tag ImagePositionPatient"):
        dicom.load_series(tmp_path)


def test_two_series(tmp_path):
    a = dicom.write_series(_volume(), (5.0, 0.5, 0.5), tmp_path / "a", series_description="HEAD 5mm")
    dicom.write_series(_volume(1, shape=(4, 12, 10)), (0.625, 0.5, 0.5), tmp_path / "b",
                       series_description="HEAD BONE", study_uid=pydicom.dcmread(a[0]).StudyInstanceUID)
    headers = dicom.scan_series(tmp_path)
    by_description = {h.description: h for h in headers.values()}
    assert {k: len(h.files) for k, h in by_description.items()} == {"HEAD 5mm": 6, "HEAD BONE": 4}
    with pytest.raises(dicom.DicomError) as e:
        dicom.load_series(tmp_path)
    for uid, h in headers.items():
        assert uid in str(e.value) and repr(h.description) in str(e.value)
    assert "6 files" in str(e.value) and "4 files" in str(e.value)

    bone = by_description["HEAD BONE"]
    s = dicom.load_series(tmp_path, series_uid=bone.series_uid)
    assert s.hu.shape == (4, 12, 10) and s.spacing[0] == 0.625
    assert dicom.load_series(bone.files).series_uid == bone.series_uid
    with pytest.raises(dicom.DicomError, match="SeriesInstanceUID 1.2.3 not in"):
        dicom.load_series(tmp_path, series_uid="1.2.3")


def test_duplicate_positions_name_both_files(tmp_path):
    paths = dicom.write_series(_volume(), (5.0, 0.5, 0.5), tmp_path,
                               z_positions=[0.0, 5.0, 10.0, 10.0, 15.0, 20.0])
    with pytest.raises(dicom.DicomError, match=f"duplicate slice position.*{paths[2]}.*{paths[3]}"):
        dicom.load_series(tmp_path)


def test_mixed_size_or_orientation(tmp_path):
    uid = pydicom.uid.generate_uid()
    dicom.write_series(_volume(), (5.0, 0.5, 0.5), tmp_path / "x", series_uid=uid)
    dicom.write_series(_volume(shape=(1, 12, 11)), (5.0, 0.5, 0.5), tmp_path / "y",
                       series_uid=uid, z_positions=[50.0])
    with pytest.raises(dicom.DicomError, match=r"Rows/Columns 12x11 differ"):
        dicom.load_series(tmp_path)
    shutil.rmtree(tmp_path / "y")
    dicom.write_series(_volume(shape=(1, 12, 10)), (5.0, 0.5, 0.5), tmp_path / "y", series_uid=uid,
                       z_positions=[50.0], orientation=(1, 0, 0, 0, 0.96, -0.28))
    with pytest.raises(dicom.DicomError, match=r"y/0000.dcm: ImageOrientationPatient \[1.0, 0.0, 0.0, 0.0, 0.96, -0.28\]"):
        dicom.load_series(tmp_path)


# Real slices nobody here made.

@pytest.mark.parametrize("name", ["J2K_pixelrep_mismatch.dcm", "CT_small.dcm"])
def test_real_slice_hu_matches_pydicom(name):
    ds = pydicom.dcmread(pydicom.data.get_testdata_file(name))
    hu = dicom.to_hu(ds)
    assert hu.dtype == np.float32 and hu.shape == (ds.Rows, ds.Columns)
    np.testing.assert_array_equal(hu, apply_modality_lut(ds.pixel_array, ds).astype(np.float32))


def test_real_head_ct_slice_loads(tmp_path):
    src = pathlib.Path(pydicom.data.get_testdata_file("J2K_pixelrep_mismatch.dcm"))
    shutil.copy(src, tmp_path / "slice")  # no extension: detected by content
    s = dicom.load_series(tmp_path)
    ds = pydicom.dcmread(src)
    assert s.hu.shape == (1, 512, 512)
    np.testing.assert_array_equal(s.hu[0], apply_modality_lut(ds.pixel_array, ds))
    # air and brain are where a head CT has them
    assert s.hu.min() <= -1000 and np.median(s.hu[0, 200:300, 200:300]) == pytest.approx(35, abs=30)
    np.testing.assert_allclose(s.orientation, [float(v) for v in ds.ImageOrientationPatient])
    assert s.spacing[0] == s.slice_thickness == float(ds.SliceThickness)
