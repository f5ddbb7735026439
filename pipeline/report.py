"""``report.md``: the Markdown report written into the output folder.

Each stage kind renders its own section from its metrics and measurements
(:meth:`pipeline.contract.Stage.report`); this module only assembles them.
"""

from __future__ import annotations

from pipeline.config import Pipeline, display_path


def render_report(pipeline: Pipeline, sections: list[str]) -> str:
    header = [
        f"# {pipeline.name}",
        "",
        f"Pipeline file: `{pipeline.path.name}`. Written by `pipe run {display_path(pipeline.path)}`; "
        "timings are from the run that computed each stage.",
        "",
    ]
    # The header ends with a blank line; sections are separated by one.
    return "\n".join(header) + "\n" + "\n".join(section.rstrip() + "\n" for section in sections)
