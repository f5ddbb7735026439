"""JSON Schemas of the pipeline file and of each stage kind's params.

A package only so that the schema files install with `pipeline` and
`stages`; ``pipeline.schema`` reads them.
"""
