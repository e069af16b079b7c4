"""Issue 11 item 12, the small things: an absurd RescaleSlope is a clear error with no numpy
warning; an empty question gets the same refusal from ask and batch (tests/test_output_errors.py)."""

from __future__ import annotations

import warnings

import pydicom
import pytest
from pydicom.data import get_testdata_file

from huatuo_cli.errors import HuatuoError
from huatuo_cli.imaging.load import load_image


@pytest.mark.parametrize("slope,intercept", [("1e308", "0"), ("1", "1e308"), ("-1e300", "0")])
def test_overflowing_rescale_is_a_clear_error_without_warning(tmp_path, slope, intercept):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.save_as(tmp_path / "ct.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning (numpy overflow included) fails the test
        with pytest.raises(HuatuoError, match="corrupt header"):
            load_image(tmp_path / "ct.dcm")
