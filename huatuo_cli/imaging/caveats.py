"""What a reader of an image (or of its thumbnail in a shared report) must be warned about.

Two header facts matter before an image is shown outside the workstation or trusted for fine
detail (PS3.3 C.7.6.1.1.5 and C.7.6.1.1.9 (BurnedInAnnotation)):

* lossy compression: LossyImageCompression "01", or a transfer syntax that is lossy by
  definition. Grey levels then differ from the acquisition; worth a note, not a secret.
* burned-in annotation: text drawn into the pixels, which on ultrasound and secondary capture
  typically includes the patient's name and ID. "YES" says so; ultrasound, secondary capture and
  plain pictures (PNG/JPEG screenshots) without the attribute may carry it, so they count as
  "possible". Such pixels are PHI: the shareable report leaves their thumbnails out by default.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

#: transfer syntaxes that are lossy whatever LossyImageCompression says: JPEG baseline/extended,
#: JPEG-LS near-lossless, JPEG 2000 (lossy-capable: only "lossless only" .90 is excluded), MPEG/HEVC
LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.102",
    "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105",
    "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108",
}
#: Secondary Capture Image Storage and the multi-frame secondary capture SOP classes
SECONDARY_CAPTURE = {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
                     "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4"}


def is_lossy(ds: Dataset) -> bool:
    """Whether the pixel data has been through lossy compression (now or at some earlier step)."""
    if str(ds.get("LossyImageCompression", "") or "").strip() == "01":
        return True
    return str(ds.file_meta.get("TransferSyntaxUID", "") if hasattr(ds, "file_meta") else "") in LOSSY_SYNTAXES


def burned_in(ds: Dataset) -> str:
    """"yes", "possible" or "no": may the pixels carry burned-in text (see module docstring)?"""
    value = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if value == "YES":
        return "yes"
    if value == "NO":
        return "no"
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in ("US", "IVUS") or str(ds.get("SOPClassUID", "")) in SECONDARY_CAPTURE:
        return "possible"
    return "no"
