"""vfu_nb: landmark-aware garment classification on DeepFashion-C, notebook first."""

__version__ = "0.1.0"
