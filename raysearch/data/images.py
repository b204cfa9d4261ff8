"""Every image raysearch reads is decoded here: JPEG, PNG, BMP, TIFF at their full bit depth, and DICOM.

- `inspect_image(path)` reads a file's header only: its size as displayed, channels, bit depth and, for DICOM,
  modality, photometric interpretation, bits stored, PatientID and pixel spacing. `read_image(path)` decodes
  the grey pixels at full depth; `read_array(path)` the stored array with its channels (masks). Each raises
  `ImageError` (a one-line reason) for a file that is not an image raysearch can train on.
- `to_grey8(image, intensity)` maps a decoded image to the 8-bit grey the cache holds. An 8-bit file keeps its
  pixels exactly (`cv2.IMREAD_GRAYSCALE`); a deeper one is mapped by an intensity window (`INTENSITIES`):
  `window` is the DICOM file's own VOI (first window or VOI LUT sequence; its full stored range when it has
  neither), and for a PNG or TIFF, which carries no window, the `minmax` one (the image's whole range, linearly:
  a 12-bit export of an 8-bit original maps back to it); `percentile` stretches its 0.5-99.5 % range.
  MONOCHROME1 (or a Presentation LUT Shape of INVERSE) is inverted after that step (PS3.3 C.7.6.3.1.2), so bone is
  bright in every image.
- Hostile files are refused from their header, before anything is decoded: more than `MAX_PIXELS` pixels (a
  decompression bomb: Pillow's limit and OpenCV's `CV_IO_MAX_IMAGE_PIXELS` are set to it too) or a decode
  larger than `MAX_DECODE_BYTES`.
- EXIF orientation is applied everywhere, to images and masks alike, and sizes are reported as displayed:
  it is how viewers and annotation tools showed the image to whoever labelled it, and what OpenCV's own
  `imread` does to a JPEG or PNG.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
from PIL import Image

from raysearch.errors import DataError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

Intensity = Literal["window", "minmax", "percentile"]
INTENSITIES: tuple[str, ...] = get_args(Intensity)
PERCENTILES = (0.5, 99.5)
# Pillow's own limit (89 Mpx: it warns above it and refuses twice as many), four times the largest radiograph (a
# mammogram, ~4,000 x 5,600 pixels); OpenCV is given the same limit.
MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485
MAX_DECODE_BYTES = 1 << 30
DEFER_BYTES = 4096  # a DICOM header read leaves values this long (the pixel data) unread
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
RASTER_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DICOM_MAGIC_OFFSET, DICOM_MAGIC = 128, b"DICM"
EXIF_ORIENTATION = 0x0112
DEEP_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})  # Pillow's modes of grey data over 8 bits
os.environ.setdefault("CV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))  # read by OpenCV at its first decode


class ImageError(DataError):
    """A file that is not an image raysearch can read: the message says why (the caller adds the path)."""


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says: size as displayed (EXIF orientation applied), channels, bits per sample, and
    the DICOM attributes raysearch uses (None for other files)."""

    width: int
    height: int
    channels: int
    bits: int
    dicom: bool = False
    orientation: int = 1
    modality: str | None = None
    photometric: str | None = None
    patient: str | None = None
    pixel_spacing: tuple[float, float] | None = None


@dataclass(frozen=True)
class DecodedImage:
    """Grey pixels at full depth (H, W): uint8 for an 8-bit file, uint16 or float for a deeper one, the modality
    LUT's output (float) for DICOM, whose dataset (`dicom`) then gives the window and the polarity."""

    pixels: np.ndarray
    header: ImageHeader
    dicom: Dataset | None = None

    @property
    def eight_bit(self) -> bool:
        """Whether the file holds 8-bit grey levels, kept as they are in the cache."""
        return self.dicom is None and self.pixels.dtype == np.uint8


def is_dicom(path: Path) -> bool:
    """A `.dcm` / `.dicom` file, or one without a suffix that starts with the DICOM preamble."""
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix:
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(DICOM_MAGIC_OFFSET)
            return handle.read(len(DICOM_MAGIC)) == DICOM_MAGIC
    except OSError:
        return False


def is_image(path: Path) -> bool:
    """Whether a file is an image by its suffix or DICOM preamble (hidden files excluded)."""
    if path.name.startswith(".") or not path.is_file():
        return False
    return path.suffix.lower() in RASTER_SUFFIXES or is_dicom(path)


def _check_size(width: int, height: int, channels: int, bytes_per_sample: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageError(f"{width}x{height} is {width * height:,} pixels, over the limit of {MAX_PIXELS:,} "
                         "(a possible decompression bomb); skipped without decoding")
    if width * height * channels * bytes_per_sample > MAX_DECODE_BYTES:
        raise ImageError(f"{width}x{height}x{channels} at {8 * bytes_per_sample} bits would take over "
                         f"{MAX_DECODE_BYTES >> 20} MiB to decode; skipped")


def _dicom(path: Path, *, pixels: bool) -> Dataset:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, defer_size=None if pixels else DEFER_BYTES)
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError, TypeError) as error:
        raise ImageError(f"not a readable DICOM file ({type(error).__name__}: {str(error).splitlines()[0]})") from None


def _dicom_header(ds: Dataset, has_pixels: bool) -> ImageHeader:
    if not has_pixels or "Rows" not in ds or "Columns" not in ds:
        raise ImageError("DICOM file without pixel data")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if int(ds.get("SamplesPerPixel", 1)) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageError(f"colour DICOM ({photometric or 'no PhotometricInterpretation'}): only grey radiographs "
                         "(MONOCHROME1/2) are read")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(f"multi-frame DICOM ({frames} frames): only single-frame radiographs are read")
    width, height, bits = int(ds.Columns), int(ds.Rows), int(ds.get("BitsAllocated", 16))
    _check_size(width, height, 1, max(bits // 8, 1))
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    patient = str(ds.get("PatientID", "")).strip() or None
    return ImageHeader(width, height, 1, int(ds.get("BitsStored", bits)), dicom=True,
                       modality=str(ds.get("Modality", "")) or None, photometric=photometric, patient=patient,
                       pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None)


def _raster_header(path: Path) -> ImageHeader:
    from PIL import UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            channels = len(image.getbands())
            bits = 16 if image.mode in DEEP_MODES else 8
            sample_bytes = 4 if image.mode in ("I", "F") else bits // 8
            exif_in_header = image.format != "PNG" or "exif" in image.info  # a PNG's eXIf after IDAT needs a decode
            orientation = int(image.getexif().get(EXIF_ORIENTATION, 1)) if exif_in_header else 1
    except Image.DecompressionBombError as error:
        raise ImageError(f"refused by Pillow as a possible decompression bomb ({error}); skipped without "
                         "decoding") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        raise ImageError("unreadable or corrupt image") from None
    _check_size(width, height, channels, sample_bytes)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageHeader(width, height, channels, bits, orientation=orientation if 1 <= orientation <= 8 else 1)


def inspect_image(path: Path) -> ImageHeader:
    """A file's header (size as displayed, channels, depth, DICOM attributes); ImageError when it is no readable
    image or a hostile one (see module docstring). Nothing is decoded."""
    path = Path(path)
    if is_dicom(path):
        ds = _dicom(path, pixels=False)
        return _dicom_header(ds, "PixelData" in ds)
    return _raster_header(path)


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """An array (H, W[, C]) as displayed under an EXIF orientation (1-8), as Pillow's `ImageOps.exif_transpose`."""
    turned = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }[orientation](array)
    return np.ascontiguousarray(turned)


def _imread(path: Path, flags: int) -> np.ndarray:
    import cv2

    pixels = cv2.imread(str(path), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None:
        raise ImageError("unreadable or corrupt image")
    return pixels


def _dicom_pixels(path: Path) -> tuple[np.ndarray, Dataset]:
    """The stored pixel array of a single-frame grey DICOM and its dataset."""
    ds = _dicom(path, pixels=True)
    _dicom_header(ds, "PixelData" in ds)
    try:
        return ds.pixel_array, ds
    except Exception as error:  # pydicom's decoders raise many kinds; the file is what is wrong
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ImageError(f"DICOM pixel data cannot be decoded ({reason})") from None


def read_image(path: Path) -> DecodedImage:
    """Decode a file's grey pixels at full depth (see DecodedImage); ImageError when it cannot be read."""
    import cv2
    from pydicom.pixels import apply_modality_lut

    path = Path(path)
    header = inspect_image(path)
    if header.dicom:
        stored, ds = _dicom_pixels(path)
        return DecodedImage(apply_modality_lut(stored, ds).astype(np.float64), header, ds)
    flags = cv2.IMREAD_ANYDEPTH if header.bits > 8 else cv2.IMREAD_GRAYSCALE
    return DecodedImage(orient(_imread(path, flags), header.orientation), header)


def read_array(path: Path) -> np.ndarray:
    """A file's stored array with its channels (H, W[, C]) as displayed: what a mask is read from."""
    import cv2

    path = Path(path)
    header = inspect_image(path)
    if header.dicom:
        return _dicom_pixels(path)[0]
    return orient(_imread(path, cv2.IMREAD_UNCHANGED), header.orientation)


def _dicom_unit(image: DecodedImage) -> tuple[np.ndarray, str]:
    """The DICOM's VOI output scaled to [0, 1] (its first window or VOI LUT; its full stored range when it has
    neither), before any inversion, and a description of the window."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = image.dicom
    lut = ds.VOILUTSequence[0] if ds.get("VOILUTSequence") else None
    has_lut = lut is not None and None not in (lut.get("LUTDescriptor"), lut.get("LUTData"))
    has_window = None not in (ds.get("WindowCenter"), ds.get("WindowWidth"))
    if has_lut:  # apply_voi_lut prefers the LUT too; its ends are those of its input range
        entries, first = int(lut.LUTDescriptor[0]) or 1 << 16, int(lut.LUTDescriptor[1])
        ends = apply_voi_lut(np.array([first, first + entries - 1], dtype=np.int64), ds).astype(np.float64)
        values, what = apply_voi_lut(np.round(image.pixels).astype(np.int64), ds), "DICOM VOI LUT"
    elif has_window:  # the window maps everything below and above it to its output ends
        ends = apply_voi_lut(np.array([-np.inf, np.inf]), ds)
        values = apply_voi_lut(image.pixels, ds)
        centre, width = (_first(ds.WindowCenter), _first(ds.WindowWidth))
        what = f"DICOM window centre {centre:g} width {width:g}"
    else:
        bits, signed = int(ds.get("BitsStored", 16)), int(ds.get("PixelRepresentation", 0)) == 1
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        ends = apply_modality_lut(np.array([low, high], dtype=np.int64), ds).astype(np.float64)
        values, what = image.pixels, f"DICOM full stored range ({bits} bits)"
    return _unit(values, float(np.min(ends)), float(np.max(ends))), what


def _first(value: Any) -> float:
    """The first of a multi-valued DICOM attribute (WindowCenter, WindowWidth), else the value."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _unit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    span = high - low
    if span == 0:
        return np.zeros(values.shape, dtype=np.float64)
    return np.clip((np.asarray(values, dtype=np.float64) - low) / span, 0.0, 1.0)


def window_unit(image: DecodedImage, intensity: str) -> tuple[np.ndarray, str]:
    """A deep image mapped to [0, 1] by the intensity window `intensity` (inversion not applied), and what
    window it was."""
    if intensity not in INTENSITIES:
        raise ValueError(f"intensity must be one of {', '.join(INTENSITIES)}, got {intensity!r}")
    if intensity == "window" and image.dicom is not None:
        return _dicom_unit(image)
    values = image.pixels
    if intensity in ("minmax", "window"):  # a PNG, TIFF or array carries no window of its own: its whole range
        low, high = float(values.min()), float(values.max())
        return _unit(values, low, high), f"minmax {low:g}-{high:g}"
    low, high = (float(v) for v in np.percentile(values, PERCENTILES))
    return _unit(values, low, high), f"percentile {PERCENTILES[0]:g}-{PERCENTILES[1]:g} % ({low:g}-{high:g})"


def inverted(image: DecodedImage) -> bool:
    """Whether the DICOM shows low values bright (MONOCHROME1 or a Presentation LUT Shape of INVERSE)."""
    ds = image.dicom
    return ds is not None and (ds.get("PhotometricInterpretation") == "MONOCHROME1"
                               or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE")


def to_grey8(image: DecodedImage, intensity: str = "window") -> tuple[np.ndarray, str]:
    """The 8-bit grey (H, W) uint8 the cache holds, and the window used ('8-bit' when the file is 8-bit: its
    pixels are kept exactly)."""
    if image.eight_bit:
        return image.pixels, "8-bit"
    unit, what = window_unit(image, intensity)
    if inverted(image):
        unit, what = 1.0 - unit, f"{what}, inverted ({image.dicom.PhotometricInterpretation})"
    return np.round(unit * 255.0).astype(np.uint8), what


def array_grey8(array: np.ndarray, intensity: str = "window") -> tuple[np.ndarray, str]:
    """A grey array given in memory as 8-bit: uint8 kept, floats in [0, 1] scaled by 255, uint16 by the
    intensity window (`window` being the minmax one: an array carries none), other integers clipped."""
    if array.dtype == np.uint8:
        return array, "8-bit"
    if np.issubdtype(array.dtype, np.floating):
        return (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8), "float 0-1"
    if array.dtype == np.uint16:
        header = ImageHeader(array.shape[1], array.shape[0], 1, 16)
        return to_grey8(DecodedImage(array, header), intensity)
    return np.clip(array, 0, 255).astype(np.uint8), "clipped 0-255"


def read_grey(path: Path, intensity: str = "window") -> tuple[np.ndarray, str]:
    """A file as the cache's 8-bit grey (see `to_grey8`), and the window used; ImageError when unreadable."""
    return to_grey8(read_image(path), intensity)
