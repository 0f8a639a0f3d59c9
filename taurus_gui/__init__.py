"""Taurus GUI for the beamline (see issue: Operator GUI)."""
