"""Thin omero CLI controls: parse arguments, call a core, render its results."""
