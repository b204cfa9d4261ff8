"""Image files written by the tests: DICOM radiographs with pydicom (no DICOM is committed), decompression bombs."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                window: tuple[float, float] | None = None, rescale: tuple[float, float] | None = None,
                patient: str = "P0", compress: str | None = None, **attributes) -> Path:
    """Write `pixels` (uint16, H x W) as a DX DICOM file; `compress` is a transfer syntax UID to encode with."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "DX", patient, patient
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    ds.PixelSpacing = [0.1, 0.1]
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    for name, value in attributes.items():
        setattr(ds, name, value)
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    if compress is not None:
        ds.compress(compress, np.ascontiguousarray(pixels, dtype=np.uint16))
    ds.save_as(path, enforce_file_format=True)
    return path


def bomb_png(path: Path, side: int = 20_000) -> Path:
    """A real PNG of side x side grey pixels, all zero: a few hundred kB that decode to side² bytes.

    Deflating hundreds of megabytes takes seconds, so one block of rows is deflated and repeated: after a full
    flush a raw deflate stream restarts from an empty dictionary, so equal blocks of input give equal bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows_per_block = next(n for n in (1000, 100, 10, 1) if side % n == 0)
    block = b"\x00" * ((side + 1) * rows_per_block)  # each row: filter type 0, then its pixels
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    unit = packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(side // rows_per_block):
        adler = zlib.adler32(block, adler)
    stream = b"\x78\xda" + unit * (side // rows_per_block) + packer.flush(zlib.Z_FINISH) + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b""))
    return path
