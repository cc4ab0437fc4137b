"""The image builder: definition files, bootstrap agents, sections."""
