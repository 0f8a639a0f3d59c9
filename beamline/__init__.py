"""The `beamline` command-line tool: runs, configures and inspects the beamline."""
