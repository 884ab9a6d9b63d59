import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from c2fnas_auto.data.image_io import (Geometry, check_complete, file_ending, read_image, read_image_info,
                                       read_segmentation, strip_ending, write_image, write_segmentation)
from c2fnas_auto.errors import InputError
from c2fnas_auto.utils.io import TMP_MARKER

OBLIQUE = Geometry(spacing=(0.8, 0.8, 3.0), origin=(-12.5, 40.25, 101.0),
                   direction=tuple(np.array([[np.cos(0.2), -np.sin(0.2), 0], [np.sin(0.2), np.cos(0.2), 0],
                                             [0, 0, 1.0]]).ravel()))


def _seg(shape=(6, 7, 8), high=3):
    return np.random.default_rng(0).integers(0, high, size=shape)


def test_geometry_dict_round_trip_and_zyx():
    assert Geometry.from_dict(OBLIQUE.to_dict()) == OBLIQUE
    assert OBLIQUE.spacing_zyx == (3.0, 0.8, 0.8)
    with pytest.raises(ValueError):
        Geometry((1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_geometry_matches_tolerance():
    near = Geometry((0.8 * (1 + 1e-5), 0.8, 3.0), OBLIQUE.origin, OBLIQUE.direction)
    assert OBLIQUE.matches(near) is None
    far = Geometry((0.8, 0.8, 3.1), OBLIQUE.origin, OBLIQUE.direction)
    assert "spacing" in OBLIQUE.matches(far)
    shifted = Geometry(OBLIQUE.spacing, (-12.5, 40.25, 102.0), OBLIQUE.direction)
    assert "origin" in OBLIQUE.matches(shifted)
    flipped = Geometry(OBLIQUE.spacing, OBLIQUE.origin, (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert "direction" in OBLIQUE.matches(flipped)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_write_segmentation_round_trip_exact(tmp_path, ending):
    """An input's geometry (as read) is written back onto a prediction bit for bit."""
    write_image(np.zeros((6, 7, 8), np.int16), OBLIQUE, tmp_path / f"input{ending}")
    _, geo_in = read_image([tmp_path / f"input{ending}"])
    assert np.allclose(geo_in.direction, OBLIQUE.direction, atol=1e-6)  # NIfTI stores float32
    seg = _seg()
    out = tmp_path / f"case.v1{ending}"
    write_segmentation(seg, geo_in, out)
    back, geo = read_segmentation(out)
    assert back.dtype == np.int16 and np.array_equal(back, seg)
    assert geo.spacing == geo_in.spacing and geo.origin == geo_in.origin
    if ending == ".nrrd":  # NRRD stores direction * spacing as decimal text: last-bit drift
        assert np.allclose(geo.direction, geo_in.direction, rtol=0, atol=1e-15)
    else:
        assert geo.direction == geo_in.direction
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkUInt8
    assert not [p for p in tmp_path.iterdir() if TMP_MARKER in p.name]


def test_write_segmentation_reread_geometry_is_stable(tmp_path, shared_data):
    """Geometry read from a real file survives write -> read bit for bit."""
    seg, geo = read_segmentation(shared_data / "example_seg.nii.gz")
    write_segmentation(seg, geo, tmp_path / "out.nii.gz")
    back, geo2 = read_segmentation(tmp_path / "out.nii.gz")
    assert geo2 == geo and np.array_equal(back, seg)


def test_write_segmentation_large_labels_int16(tmp_path):
    seg = _seg() * 200
    write_segmentation(seg, OBLIQUE, tmp_path / "s.nii.gz")
    assert sitk.ReadImage(str(tmp_path / "s.nii.gz")).GetPixelID() == sitk.sitkInt16
    assert np.array_equal(read_segmentation(tmp_path / "s.nii.gz")[0], seg)


def test_read_4d_msd_as_channels(tmp_path):
    data = np.random.default_rng(1).normal(size=(3, 5, 6, 7)).astype(np.float32)
    write_image(data, OBLIQUE, tmp_path / "mm.nii.gz")
    assert read_image_info(tmp_path / "mm.nii.gz").num_channels == 3
    arr, geo = read_image([tmp_path / "mm.nii.gz"])
    assert arr.shape == (3, 5, 6, 7) and arr.dtype == np.float32
    assert np.allclose(arr, data) and geo.matches(OBLIQUE, rtol=1e-6) is None


def test_read_channel_files_stacked(tmp_path):
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
    write_image(a, OBLIQUE, tmp_path / "c_0000.nii.gz")
    write_image(b, OBLIQUE, tmp_path / "c_0001.nii.gz")
    arr, geo = read_image([tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"])
    assert arr.shape == (2, 5, 6, 7) and np.allclose(arr[1], b) and geo.matches(OBLIQUE, rtol=1e-6) is None
    write_image(b[:4], OBLIQUE, tmp_path / "c_0001.nii.gz")
    with pytest.raises(InputError, match="c_0001.nii.gz: channel shape"):
        read_image([tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"])


def test_unreadable_and_truncated_name_the_file(tmp_path):
    good = tmp_path / "good.nii.gz"
    write_image(np.random.default_rng(3).normal(size=(20, 30, 30)).astype(np.float32), OBLIQUE, good)
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match=r"trunc\.nii\.gz: truncated"):
        read_image([trunc])
    cut_trailer = tmp_path / "cut.nii.gz"  # only the 8-byte gzip trailer missing
    cut_trailer.write_bytes(good.read_bytes()[:-8])
    with pytest.raises(InputError, match=r"cut\.nii\.gz: truncated or corrupt file"):
        read_image([cut_trailer])
    check_complete(good, thorough=True)
    raw = tmp_path / "raw.nii"
    raw.write_bytes(gzip.decompress(good.read_bytes())[:-100])
    with pytest.raises(InputError, match=r"raw\.nii: truncated file"):
        check_complete(raw)
    junk = tmp_path / "junk.nii.gz"
    junk.write_text("not an image")
    with pytest.raises(InputError, match=r"junk\.nii\.gz: unreadable"):
        read_image([junk])
    junk_mha = tmp_path / "junk.mha"
    junk_mha.write_text("not an image")
    with pytest.raises(InputError, match=r"junk\.mha: cannot read image"):
        read_image([junk_mha])
    with pytest.raises(InputError, match=r"missing\.nii\.gz: file not found"):
        read_segmentation(tmp_path / "missing.nii.gz")


def test_segmentation_rejects_non_integer(tmp_path):
    write_image(np.full((4, 5, 6), 0.5, np.float32), OBLIQUE, tmp_path / "s.nii.gz")
    with pytest.raises(InputError, match=r"s\.nii\.gz: segmentation contains non-integer"):
        read_segmentation(tmp_path / "s.nii.gz")


def test_2d_image_rejected(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.float32)), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(InputError, match=r"flat\.nii\.gz: image is 2D"):
        read_image([tmp_path / "flat.nii.gz"])


def test_nibabel_fallback_for_non_orthonormal_nifti(tmp_path):
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    affine[0, 1] = 0.05  # slightly skewed: ITK refuses such files
    img = nib.Nifti1Image(np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7), affine)
    img.set_qform(None, code=0)
    img.set_sform(affine, code=1)
    nib.save(img, str(tmp_path / "skew.nii.gz"))
    with pytest.raises(RuntimeError):
        sitk.ReadImage(str(tmp_path / "skew.nii.gz"))
    arr, geo = read_image([tmp_path / "skew.nii.gz"])
    assert arr.shape == (1, 7, 6, 5)  # nibabel (i, j, k) -> (z, y, x)
    assert arr[0, 2, 3, 4] == np.asarray(img.dataobj)[4, 3, 2]
    assert np.allclose(np.array(geo.direction).reshape(3, 3) @ np.array(geo.direction).reshape(3, 3).T, np.eye(3))
    assert geo.spacing[2] == pytest.approx(3.0)


def test_nibabel_fallback_agrees_with_sitk(shared_data):
    from c2fnas_auto.data.image_io import _read_nifti_with_nibabel

    ref = sitk.ReadImage(str(shared_data / "example_ct_sm.nii.gz"))
    alt, kept = _read_nifti_with_nibabel(shared_data / "example_ct_sm.nii.gz")
    assert kept is None  # orthonormal already: nothing changed, no affine to carry
    assert np.array_equal(sitk.GetArrayFromImage(alt), sitk.GetArrayFromImage(ref))
    g1, g2 = Geometry.from_sitk(ref), Geometry.from_sitk(alt)
    assert np.allclose(g1.origin, g2.origin, atol=1e-4) and np.allclose(g1.direction, g2.direction, atol=1e-6)
    assert np.allclose(g1.spacing, g2.spacing, atol=1e-6)


def test_file_ending_helpers():
    assert file_ending("a/b.c.nii.gz") == ".nii.gz" and strip_ending("a/b.c.nii.gz") == "b.c"
    assert file_ending(Path("x.NRRD")) == ".nrrd" and strip_ending("x.mha") == "x"


def _skewed_nifti(path, skew=0.05):
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    affine[0, 1] = skew
    affine[:3, 3] = [5.0, -3.0, 7.0]
    img = nib.Nifti1Image((np.arange(5 * 6 * 7).reshape(5, 6, 7) % 3).astype(np.uint8), affine)
    img.set_qform(None, code=0)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return affine


def test_skewed_header_warned_once_with_the_size_of_the_change(tmp_path, caplog):
    """B7: the orthonormalisation used to be silent."""
    import logging

    path = tmp_path / "skew_warn.nii.gz"
    _skewed_nifti(path)
    with caplog.at_level(logging.WARNING, logger="c2fnas_auto.data.image_io"):
        read_image([path])
        read_segmentation(path)  # the same case read again (integrity, fingerprint, preprocessing)
    records = [r for r in caplog.records if "orthonormal" in r.getMessage()]
    assert len(records) == 1
    msg = records[0].getMessage()
    assert str(path) in msg and "cosine change 0.025" in msg and "mm" in msg


def test_skew_change_figures():
    from c2fnas_auto.data.image_io import skew_change

    cols = np.array([[1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    spacing = np.linalg.norm(cols, axis=0)
    cosine, mm = skew_change(cols, spacing, cols / spacing, (4, 4, 4))
    assert cosine == 0.0 and mm == 0.0  # nothing changed, nothing moves
    cosine, mm = skew_change(cols, spacing, np.eye(3), (4, 4, 4))
    assert cosine == pytest.approx(0.1 / np.sqrt(1.01)) and mm > 0.25


def test_skewed_input_prediction_keeps_the_original_affine(tmp_path):
    """B7: a label map written with the geometry of a skewed input carries the input's affine
    (as sform) and stays readable by ITK (orthonormal qform)."""
    path = tmp_path / "skew_in.nii.gz"
    affine = _skewed_nifti(path)
    arr, geo = read_segmentation(path)
    assert geo.original_affine is not None and Geometry.from_dict(geo.to_dict()) == geo
    out = tmp_path / "pred.nii.gz"
    write_segmentation(arr, geo, out)
    written = nib.load(str(out))
    assert np.allclose(written.affine, affine, atol=1e-6) and int(written.header["sform_code"]) == 1
    assert np.array_equal(np.asarray(written.dataobj), np.asarray(nib.load(str(path)).dataobj))
    back, back_geo = read_segmentation(out)  # ITK reads it (qform), no fallback needed
    assert np.array_equal(back, arr) and back_geo.matches(geo) is None
    # other formats cannot hold a skewed affine: the orthonormal grid, as before
    write_segmentation(arr, geo, tmp_path / "pred.nrrd")
    assert Geometry.from_sitk(sitk.ReadImage(str(tmp_path / "pred.nrrd"))).matches(geo) is None


def test_geometry_rejects_a_malformed_affine():
    with pytest.raises(ValueError, match="16 values"):
        Geometry((1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), original_affine=(1.0, 2.0))


def test_fallback_on_an_orthonormal_file_changes_and_warns_nothing(tmp_path, caplog):
    """Only a real change is reported (ITK may refuse a file for other reasons)."""
    import logging

    from c2fnas_auto.data.image_io import _read_nifti_with_nibabel

    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), affine), str(tmp_path / "ok.nii.gz"))
    with caplog.at_level(logging.WARNING, logger="c2fnas_auto.data.image_io"):
        img, kept = _read_nifti_with_nibabel(tmp_path / "ok.nii.gz")
    assert kept is None and "orthonormal" not in caplog.text
    assert Geometry.from_sitk(img).spacing == pytest.approx((0.8, 0.8, 2.5))
