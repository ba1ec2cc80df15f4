"""Readers for the thesis datasets in their real on-disk layouts."""
