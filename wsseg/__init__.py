"""wsseg: weakly semi-supervised semantic segmentation from a few pixel labels and many crop tags."""

__version__ = "0.1.0"
