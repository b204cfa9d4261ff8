"""Images as hospitals and public datasets ship them (raysearch.data.images): DICOM (written here with pydicom),
16-bit PNG / TIFF at full depth, hostile files, EXIF orientation; the label table; patients as split groups."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from image_files import bomb_png, write_dicom
from PIL import Image, ImageOps
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from raysearch.data.audit import audit_dataset, format_audit
from raysearch.data.cache import build_cache, dataset_fingerprint, ensure_cache, load_cache
from raysearch.data.formats import detect_format, load_dataset
from raysearch.data.images import ImageError, array_grey8, inspect_image, is_image, orient, read_grey, read_image
from raysearch.data.phantom import PhantomSpec, write_phantom
from raysearch.data.preprocess import Preprocessing, enhance, fit, placement
from raysearch.data.records import SplitRatios, issues_table
from raysearch.data.splits import apply_split_policy
from raysearch.errors import DataError
from raysearch.tasks import create_task
from raysearch.training.hparams import defaults, preprocessing_of
from raysearch.training.session import LocalSession
from raysearch.training.trainer import LoopSettings, train

SIZE = 32
RNG = np.random.default_rng(0)


def _radiograph(height: int = 48, width: int = 64, bits: int = 12, seed: int = 0) -> np.ndarray:
    """A smooth 12-bit 'radiograph': a gradient, a bright 'bone' band and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = 600 + 1500 * x / width + 1200 * (np.abs(y - height / 2) < height / 6) + rng.normal(0, 60, (height, width))
    return np.clip(image, 0, (1 << bits) - 1).astype(np.uint16)


def _cache_images(root: Path, tmp_path: Path, config: Preprocessing | None = None) -> tuple[np.ndarray, list[str]]:
    index = load_dataset(root)
    build_cache(index, config or Preprocessing(image_size=SIZE), tmp_path / "cache", progress=False)
    cached = load_cache(tmp_path / "cache")
    return np.asarray(cached.images), [Path(p).relative_to(root.resolve()).as_posix() for p in cached.paths]


def test_monochrome1_and_monochrome2_of_the_same_pixels_give_the_same_cached_image(tmp_path: Path) -> None:
    pixels = _radiograph()
    for split in ("train", "val"):
        for name in ("a", "b"):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            write_dicom(folder / "mono2.dcm", pixels, photometric="MONOCHROME2", window=(2000, 3000))
            # The same radiograph stored inverted: low values bright, its window mirrored.
            write_dicom(folder / "mono1.dcm", 4095 - pixels, photometric="MONOCHROME1", window=(4095 - 2000 + 1, 3000))
    images, names = _cache_images(tmp_path / "data", tmp_path)
    mono1, mono2 = images[names.index("train/a/mono1.dcm")], images[names.index("train/a/mono2.dcm")]
    assert np.abs(mono1.astype(int) - mono2.astype(int)).max() <= 1
    assert mono2.std() > 20  # not a blank image: bone is bright in both


def test_rescale_and_window_are_applied_as_dicom_specifies(tmp_path: Path) -> None:
    pixels = np.array([[0, 100, 1000, 1500], [2000, 2500, 3000, 4095]], dtype=np.uint16)
    path = write_dicom(tmp_path / "w.dcm", pixels, window=(-200, 1500), rescale=(0.5, -1024), RescaleType="US")
    decoded = read_image(path)
    import pydicom

    ds = pydicom.dcmread(path)
    expected_values = apply_modality_lut(ds.pixel_array, ds)
    assert decoded.pixels == pytest.approx(expected_values)
    windowed = apply_voi_lut(expected_values, ds)  # pydicom's output spans the stored range, 0..4095 rescaled
    low, high = 0 * 0.5 - 1024, 4095 * 0.5 - 1024
    grey, window = read_grey(path)
    assert grey.astype(int).tolist() == np.round((windowed - low) / (high - low) * 255).astype(int).tolist()
    assert window == "DICOM window centre -200 width 1500"
    # Without a window, the full stored range: 0 black, 4095 white.
    plain, window = read_grey(write_dicom(tmp_path / "plain.dcm", pixels))
    assert plain[0, 0] == 0 and plain[1, 3] == 255 and "full stored range (12 bits)" in window


def test_several_windows_take_the_first_and_a_voi_lut_sequence_wins(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    pixels = np.array([[0, 1000, 2000, 3000]], dtype=np.uint16)
    several = write_dicom(tmp_path / "several.dcm", pixels, window=([1000, 3000], [1000, 500]))
    assert read_grey(several)[1] == "DICOM window centre 1000 width 1000"
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.LUTData = np.arange(4095, -1, -1, dtype=np.uint16).tobytes()  # decreasing: the polarity it encodes is kept
    path = write_dicom(tmp_path / "lut.dcm", pixels, window=(1000, 1000), VOILUTSequence=[lut])
    grey, window = read_grey(path)
    assert window == "DICOM VOI LUT" and grey[0, 0] == 255 and grey[0, 3] < grey[0, 2] < grey[0, 1]


@pytest.mark.parametrize("syntax", ["JPEG2000Lossless", "RLELossless"])
def test_a_compressed_dicom_decodes_to_its_uncompressed_twin(tmp_path: Path, syntax: str) -> None:
    import pydicom.uid

    pixels = _radiograph()
    plain = read_image(write_dicom(tmp_path / "plain.dcm", pixels, window=(2000, 3000)))
    packed = read_image(write_dicom(tmp_path / "packed", pixels, window=(2000, 3000),
                                    compress=getattr(pydicom.uid, syntax)))
    assert is_image(tmp_path / "packed")  # no suffix: found by its DICM preamble
    assert np.array_equal(plain.pixels, packed.pixels)


def test_colour_multiframe_and_pixelless_dicom_are_listed_problems(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    for split in ("train", "val"):
        for name in ("a", "b"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            write_dicom(folder / "good.dcm", _radiograph(), window=(2000, 3000))
    bad = tmp_path / "train" / "a"
    colour = write_dicom(bad / "colour.dcm", _radiograph(), photometric="MONOCHROME2")
    import pydicom

    ds = pydicom.dcmread(colour)
    ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "RGB", 3, 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = np.zeros((48, 64, 3), np.uint8).tobytes()
    ds.save_as(colour)
    frames = pydicom.dcmread(write_dicom(bad / "frames.dcm", _radiograph()))
    frames.NumberOfFrames = 2
    frames.PixelData = np.concatenate([_radiograph(), _radiograph()]).tobytes()
    frames.save_as(bad / "frames.dcm")
    meta = FileMetaDataset()
    meta.TransferSyntaxUID, meta.MediaStorageSOPInstanceUID = ExplicitVRLittleEndian, generate_uid()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    empty = Dataset()
    empty.file_meta, empty.PatientID, empty.Modality = meta, "P9", "DX"
    empty.save_as(bad / "empty.dcm", enforce_file_format=True)
    (bad / "junk.dcm").write_bytes(b"\x00" * 200)
    index = load_dataset(tmp_path)
    reasons = {Path(i.path).name: i.message for i in index.issues}
    assert "colour DICOM (RGB)" in reasons["colour.dcm"]
    assert "multi-frame DICOM (2 frames)" in reasons["frames.dcm"]
    assert reasons["empty.dcm"] == "DICOM file without pixel data"
    assert reasons["junk.dcm"].startswith("not a readable DICOM file")
    assert len(index.samples) == 4


def _png_bytes(pixels: np.ndarray) -> bytes:
    return cv2.imencode(".png", pixels)[1].tobytes()


def test_sixteen_bit_pngs_keep_their_levels_and_eight_bit_caches_keep_todays_pixels(tmp_path: Path) -> None:
    eight, deep = tmp_path / "eight", tmp_path / "deep"
    for split in ("train", "val"):
        for name in ("a", "b"):
            for seed in range(3):
                twelve = _radiograph(seed=seed + 10 * (split == "val") + 20 * (name == "b"))
                folder8, folder16 = eight / split / name, deep / split / name
                folder8.mkdir(parents=True, exist_ok=True)
                folder16.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(folder8 / f"{seed}.png"), (twelve >> 4).astype(np.uint8))
                cv2.imwrite(str(folder16 / f"{seed}.png"), twelve)
    colour = np.dstack([(_radiograph(seed=7) >> 4).astype(np.uint8)] * 2 + [np.full((48, 64), 9, np.uint8)])
    cv2.imwrite(str(eight / "train" / "a" / "colour.jpg"), colour)
    cv2.imwrite(str(deep / "train" / "a" / "tiff.tif"), _radiograph(seed=8))
    config = Preprocessing(image_size=SIZE)
    cached8, names8 = _cache_images(eight, tmp_path / "c8", config)
    for image, name in zip(cached8, names8, strict=True):  # exactly what cv2.IMREAD_GRAYSCALE + fit gave before
        path = eight / name
        before = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(image, enhance(fit(before, placement(64, 48, SIZE, "letterbox")), config)), name
    cached16, names16 = _cache_images(deep, tmp_path / "c16", config)
    big = read_grey(deep / "train" / "a" / "0.png")[0]
    assert len(np.unique(big)) >= 200  # a 12-bit image keeps its contrast (the top 8 bits of 16 gave 16 levels)
    assert "train/a/tiff.tif" in names16
    by_name = dict(zip(names8, cached8, strict=True))
    pairs = [(by_name[n], image) for n, image in zip(names16, cached16, strict=True) if n in by_name]
    assert len(pairs) == 12
    for a, b in pairs:
        inside = a > 0  # the letterbox padding is zero in both
        assert np.corrcoef(a[inside].astype(float), b[inside].astype(float))[0, 1] >= 0.99


def test_intensity_choices_and_uint16_arrays() -> None:
    twelve = _radiograph()
    window, what = array_grey8(twelve, "window")  # an array carries no window of its own: its whole range
    assert what == f"minmax {twelve.min()}-{twelve.max()}" and window.min() == 0 and window.max() == 255
    stretched, what = array_grey8(twelve, "percentile")
    assert what.startswith("percentile 0.5-99.5 %") and stretched.min() == 0 and stretched.max() == 255
    assert (stretched.astype(int) - window.astype(int)).std() > 0  # another window, other pixels
    assert array_grey8(twelve.astype(np.uint8), "minmax")[1] == "8-bit"
    assert np.array_equal(array_grey8(np.array([[0.0, 1.0]]))[0], [[0, 255]])


def test_a_decompression_bomb_among_good_images_is_skipped_and_listed(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for name in ("a", "b"):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                cv2.imwrite(str(folder / f"{i}.png"), (_radiograph(seed=i) >> 4).astype(np.uint8))
    bomb = bomb_png(tmp_path / "data" / "train" / "a" / "bomb.png")
    with pytest.raises(ImageError, match=r"decompression bomb .*400000000 pixels"):
        inspect_image(bomb)
    smaller = bomb_png(tmp_path / "smaller.png", 10_000)
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageError, match=r"10000x10000 is 100,000,000 "
                                                                     r"pixels, over the limit of 89,478,485 "):
        inspect_image(smaller)
    index = load_dataset(tmp_path / "data")
    assert len(index.samples) == 8
    assert [(Path(i.path).name, "decompression bomb" in i.message) for i in index.issues] == [("bomb.png", True)]
    assert issues_table(index.issues).column("path").to_pylist() == [str(bomb)]
    audit = audit_dataset(tmp_path / "data", progress=False)
    assert any(f.path == str(bomb) and "decompression bomb" in f.detail for f in audit.rows("issues"))
    assert "bomb.png" in format_audit(audit)


def test_exif_orientation_is_applied_as_pillow_does() -> None:
    stored = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for orientation in range(1, 9):
        image = Image.fromarray(stored)
        exif = image.getexif()
        exif[0x0112] = orientation
        image.info["exif"] = exif.tobytes()
        expected = np.asarray(ImageOps.exif_transpose(image))
        assert np.array_equal(orient(stored, orientation), expected), orientation


def test_an_exif_rotated_image_and_its_mask_stay_aligned(tmp_path: Path) -> None:
    """The JPEG is stored 48 wide and 64 high with orientation 6 (shown 64 x 48); its mask was drawn on the image as
    shown. The bright corner of the image as shown and the mask's foreground must coincide in the cache."""
    shown = np.full((48, 64), 40, np.uint8)
    shown[4:20, 40:60] = 230
    mask = np.zeros((48, 64), np.uint8)
    mask[4:20, 40:60] = 255
    for split in ("train", "val"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir(parents=True)
        for i in range(2):
            stored = Image.fromarray(np.rot90(shown, 1).copy())  # orientation 6 turns it back clockwise
            exif = stored.getexif()
            exif[0x0112] = 6
            stored.save(tmp_path / split / "images" / f"x{i}.jpg", exif=exif, quality=95)
            cv2.imwrite(str(tmp_path / split / "masks" / f"x{i}.png"), mask)
    index = load_dataset(tmp_path)
    assert index.issues == [] and len(index.samples) == 4
    build_cache(index, Preprocessing(image_size=SIZE, resize="stretch"), tmp_path / "cache", progress=False)
    cached = load_cache(tmp_path / "cache")
    for image, cached_mask in zip(cached.images, cached.masks, strict=True):
        inside, outside = image[cached_mask > 0], image[(cached_mask == 0)]
        assert inside.mean() > 180 and outside.mean() < 80


def _table_dataset(tmp_path: Path, rows: list[str]) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(8):
        cv2.imwrite(str(images / f"{i}.png"), (_radiograph(seed=i) >> 4).astype(np.uint8))
    table = tmp_path / "labels.csv"
    table.write_text("\n".join(rows) + "\n")
    return table


def test_a_label_table_with_a_missing_file_names_its_row(tmp_path: Path) -> None:
    rows = ["Image Index,Finding,Patient ID", *[f"images/{i}.png,{'ab'[i % 2]},P{i}" for i in range(8)],
            "images/gone.png,a,P9", "images/3.png,,P3"]
    table = _table_dataset(tmp_path, rows)
    assert detect_format(tmp_path) == "table"
    index = load_dataset(tmp_path, split_ratios=SplitRatios(0.5, 0.25, 0.25))
    assert index.classes == ["a", "b"] and len(index.samples) == 8
    assert [str(i) for i in index.issues] == [f"{table}:10: row 9: image images/gone.png not found (relative to "
                                              f"{tmp_path})", f"{table}:11: row 10: empty class"]
    assert {s.patient for s in index.samples} == {f"P{i}" for i in range(8)}
    with pytest.raises(DataError, match=r"labels.csv:10: row 9: image images/gone.png not found"):
        load_dataset(table, on_error="error")
    with pytest.raises(DataError, match=r"labels.csv:1: no column 'Name' \(--columns label=...\)"):
        load_dataset(table, columns="label=Name")


def test_a_patient_in_two_published_splits_is_one_group_outside_test_clean(tmp_path: Path) -> None:
    rows = ["path,label,split,patient", "images/0.png,a,train,P1", "images/1.png,b,train,P2",
            "images/2.png,a,val,P3", "images/3.png,b,val,P4", "images/4.png,a,test,P1", "images/5.png,b,test,P5"]
    table = _table_dataset(tmp_path, rows)
    index = load_dataset(table)
    outcome = apply_split_policy(index, None, ratios=SplitRatios(), seed=0, progress=False)
    assert outcome.policy == "published"
    rows = outcome.table().to_pydict()
    group = dict(zip(map(lambda p: Path(p).name, rows["image"]), rows["group"], strict=True))
    flagged = {Path(p).name for p, f in zip(rows["image"], rows["source_in_train"], strict=True) if f}
    assert group["0.png"] == group["4.png"] and flagged == {"4.png"}  # the test image of P1 is not clean
    grouped = apply_split_policy(index, "grouped", ratios=SplitRatios(0.5, 0.25, 0.25), seed=3, progress=False)
    split_of = {Path(s.image_path).name: s.split for s in grouped.index.samples}
    assert split_of["0.png"] == split_of["4.png"]


def test_dicom_patients_join_groups_and_the_audit_counts_them(tmp_path: Path) -> None:
    for split, patients in (("train", ["A", "B"]), ("val", ["A", "C"])):
        for name in ("x", "y"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i, patient in enumerate(patients):
                write_dicom(folder / f"{patient}{i}.dcm", _radiograph(seed=hash((split, name, i)) % 1000),
                            patient=patient, photometric="MONOCHROME1" if i else "MONOCHROME2")
    audit = audit_dataset(tmp_path, progress=False)
    assert audit.value("patients", "patients", "train") == 2 and audit.value("patients", "shared", "val") == 1
    assert audit.value("photometric", "MONOCHROME1", "train") == 2 and audit.value("modality", "DX", "val") == 4
    assert audit.value("bits_stored", "12", "train") == 4
    assert audit.value("sources", "in_train", "val") >= 2  # patient A's validation images
    report = format_audit(audit)
    assert "2 patients, 2.0 images per patient" in report and "photometric MONOCHROME1 ×2, MONOCHROME2 ×2" in report


def test_intensity_is_a_searchable_preprocessing_hyperparameter_in_the_cache_key() -> None:
    from raysearch.data.cache import cache_key
    from raysearch.errors import ConfigError
    from raysearch.search.space import parse_space
    from raysearch.training.hparams import defaults, preprocessing_of, schema

    task_schema = schema({})
    space = parse_space({"task": "classification", "parameters": {
        "intensity": {"type": "categorical", "choices": ["window", "percentile", "minmax"]}}},
        source="space.yaml", schema=task_schema)
    assert [p.name for p in space.parameters] == ["intensity"]
    with pytest.raises(ConfigError, match=r"fixed.intensity: unknown 'gamma'; valid: window, minmax, percentile"):
        parse_space({"task": "classification", "fixed": {"intensity": "gamma"}}, source="space.yaml",
                    schema=task_schema)
    window = preprocessing_of({**defaults({}), "intensity": "window"})
    minmax = preprocessing_of({**defaults({}), "intensity": "minmax"})
    assert cache_key("f" * 32, window) != cache_key("f" * 32, minmax)


def test_model_predict_takes_dicom_files_folders_and_uint16_arrays(tmp_path: Path) -> None:
    import json

    from raysearch.inference.predict import PREDICTIONS_JSON, Model
    from raysearch.inference.restore import build_model
    from raysearch.tasks import create_task
    from raysearch.training.hparams import defaults, preprocessing_of

    task = create_task("classification")
    hp = {**defaults(task.hyperparameters), "image_size": SIZE, "conv_layers": 2, "width": 8}
    model = Model(task, build_model(task, hp, 2).eval(), ["a", "b"], preprocessing_of(hp), {})
    folder = tmp_path / "new"
    folder.mkdir()
    write_dicom(folder / "one.dcm", _radiograph(), photometric="MONOCHROME1", window=(2000, 3000))
    write_dicom(folder / "two", _radiograph(seed=1))  # no suffix: its DICM preamble makes it an image
    cv2.imwrite(str(folder / "deep.png"), _radiograph(seed=2))
    found = model.predict([folder, _radiograph(seed=3)], out=tmp_path / "out")
    assert [Path(p.image).name for p in found] == ["deep.png", "one.dcm", "two", "array"]
    assert all(p.ok and p.class_name in ("a", "b") for p in found)
    assert [p.window.split(" (")[0].split(" ")[0] for p in found] == [
        "minmax", "DICOM", "DICOM", "minmax"]
    assert found[1].window.startswith("DICOM window centre 2000 width 3000, inverted")
    assert found[2].window.startswith("DICOM full stored range")
    assert found[1].window.endswith("inverted (MONOCHROME1)")
    written = json.loads((tmp_path / "out" / PREDICTIONS_JSON).read_text())
    assert [w["window"] for w in written] == [p.window for p in found]
    overlay = cv2.imread(found[1].overlay)
    assert overlay.shape == (48, 64, 3) and overlay.std() > 20  # drawn on the windowed image, not a black one


def test_twelve_bit_copies_of_a_dataset_train_like_the_eight_bit_originals(tmp_path: Path) -> None:
    """The phantom set, and a copy whose radiographs are 12-bit PNGs (the 8-bit values x 16, plus noise below one
    8-bit level): the caches correlate >= 0.99 image by image, and the same configuration and seed trains on both
    to validation scores within noise."""
    eight = write_phantom(tmp_path / "eight", PhantomSpec(32, 16, 4, image_size=64), progress=False)
    deep = tmp_path / "deep"
    shutil.copytree(eight, deep)
    rng = np.random.default_rng(0)
    for image in sorted(deep.glob("*/images/*.png")):
        grey = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 16
        cv2.imwrite(str(image), np.clip(grey + rng.integers(0, 16, grey.shape), 0, 4095).astype(np.uint16))
    hp = {**defaults(create_task("classification").hyperparameters), "image_size": 32, "conv_layers": 2,
          "width": 8, "batch_size": 8, "lr": 0.01}
    scores, caches = [], []
    for root in (eight, deep):
        index = load_dataset(root)
        directory, _ = ensure_cache(index, dataset_fingerprint(index), preprocessing_of(hp), tmp_path / "cache",
                                    progress=False)
        caches.append(load_cache(directory))
        session = LocalSession()
        train(hp, LoopSettings("classification", str(directory), max_epochs=3, seed=0), session)
        scores.append(max(epoch["val_score"] for epoch in session.history))
    for a, b in zip(caches[0].images, caches[1].images, strict=True):
        inside = a > 0
        assert np.corrcoef(a[inside].astype(float), b[inside].astype(float))[0, 1] >= 0.99
    assert abs(scores[0] - scores[1]) <= 0.15, scores  # 16 validation images: one image is 0.06
