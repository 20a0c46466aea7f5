"""EGD-CXR and REFLACX data: DICOM reading, gaze maps, geometry, cache, the data set and the splits."""

from cxrlib.data.dicom import read_dicom, read_image
from cxrlib.data.egd import EGDDataset, collate, read_master_sheet
from cxrlib.data.gaze import gaze_map, gaze_map_native, load_gaze_csv
from cxrlib.data.geometry import Geometry
from cxrlib.data.reflacx import REFLACXDataset
from cxrlib.data.splits import load_or_make_splits, make_splits, split_ids

__all__ = [
    "EGDDataset", "Geometry", "collate", "gaze_map", "gaze_map_native", "load_gaze_csv",
    "load_or_make_splits", "make_splits", "read_dicom", "read_image", "read_master_sheet", "split_ids",
    "REFLACXDataset",
]
