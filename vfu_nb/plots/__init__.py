"""Figures for the notebooks, one module per chapter of the series."""
