"""JSON Schemas of each stage kind's params, one file per kind."""
