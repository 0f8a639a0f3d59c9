"""Sardana controllers and macros (see issue: Sardana layer)."""
