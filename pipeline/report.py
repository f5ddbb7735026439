"""``report.md``: the Markdown report written into the output folder.

Each stage kind renders its own section from its metrics and measurements
(:meth:`pipeline.contract.Stage.report`); this module only assembles them.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.config import Pipeline, display_path


def render_report(
    pipeline: Pipeline, sections: Sequence[str], overrides: Sequence[str] = (), without_result: Sequence[str] = ()
) -> str:
    """Return the report: a header naming the command, each stage's section, then the stages without a result.

    ``overrides`` are the run's ``--set`` values (``stage.param=value``) and
    ``without_result`` one line per stage that failed, was skipped or was
    not selected, with the reason.
    """
    command = f"pipe run {display_path(pipeline.path)}" + "".join(f" --set {override}" for override in overrides)
    header = [
        f"# {pipeline.name}",
        "",
        f"Pipeline file: `{pipeline.path.name}`. Written by `{command}`; "
        "timings are from the run that computed each stage.",
        "",
    ]
    footer = []
    if without_result:
        footer = ["## Stages without a result", "", *(f"- {line}" for line in without_result)]
    # The header ends with a blank line; sections are separated by one.
    body = "\n".join(section.rstrip() + "\n" for section in [*sections, *(["\n".join(footer)] if footer else [])])
    return "\n".join(header) + "\n" + body
