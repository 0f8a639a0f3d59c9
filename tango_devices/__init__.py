"""Beamline control suite: Tango device servers, drivers and virtual hardware."""
