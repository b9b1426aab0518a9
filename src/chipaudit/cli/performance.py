"""Performance commands: bench, compare."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chipaudit.cli.audit import audit
from chipaudit.cli.common import FAIL, DeviceOption, Kind, UsageError, app, check_outputs, console, say, usage_errors
from chipaudit.report.model import EXIT_CODES, Level


@app.command()
def bench(
    device: DeviceOption = "auto",
    level: Annotated[Level, typer.Option(help="quick (two figures), standard (minutes on a CPU), or deep.")]
    = Level.standard,
    seed: Annotated[int | None, typer.Option(min=0, help="Seed of the random inputs (recorded).")] = None,
    only: Annotated[list[str] | None, typer.Option(help="Measure only these performance checks (repeatable), "
                                                   "e.g. gemm.bf16 or workload.llm_decode.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report (with every figure, its "
                                                   "repeats and noise) here, for 'chipaudit compare'.")] = None,
    requirements: Annotated[Path | None, typer.Option(help="A TOML file of needs (e.g. metric = "
                                                      "'gemm.bf16.tflops', min = 10): print a fitness table and "
                                                      "exit 1 if any need fails.")] = None,
    from_report: Annotated[Path | None, typer.Option("--from", help="Judge the requirements against this "
                                                     "saved report instead of measuring.")] = None,
) -> None:
    """Measure throughput, bandwidth, latency and workloads.

    Matrix-product throughput per format, memory and host-link bandwidth, launch latency, and
    transformer, LLM-decode and CNN-training workloads; where the chip is in the specification
    database, each figure's efficiency against its rating. A figure far below the vendor's rating
    with no throttle reason is a finding (possible hidden cap).

    Example: chipaudit bench --device cuda:0 --json h100.json

    Example: chipaudit bench --requirements needs.toml
    """
    from chipaudit.perf import bench as perf_bench
    from chipaudit.perf.compare import ReportInputError, load_report

    check_outputs((json_path, "--json", Kind.file))
    if level is Level.smoke:
        raise UsageError("--level smoke measures no performance figure: use quick, standard or deep")
    scenario = perf_bench.load_scenario(requirements)
    if from_report is not None:
        if scenario is None:
            raise UsageError("--from needs --requirements: it judges a saved report against them")
        with usage_errors(ReportInputError):
            measured = load_report(from_report)
    else:
        measured = audit(device, level, seed, perf_bench.only_patterns(only), perf_bench.params(scenario),
                         json_path)
    code = EXIT_CODES[measured.verdict]
    console.print(perf_bench.figures_table(measured))
    if scenario is not None and not perf_bench.judge(measured, scenario, console):
        code = FAIL
    raise typer.Exit(code)


@app.command()
def compare(
    reports: Annotated[list[Path], typer.Argument(help="Two or more report JSON files (or bundle folders); the "
                                                  "first is the reference column.", metavar="REPORT...")],
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the comparison as JSON here.")] = None,
) -> None:
    """Show reports side by side, changes beyond noise marked.

    Verdicts per category and check, and every performance figure with its ratio to the first
    report and its efficiency against its rating. Exit 1 when a figure is worse than the first
    report's beyond noise or a check's verdict is worse; 0 otherwise.

    Example: chipaudit compare before-driver-update.json after.json
    """
    from chipaudit.perf import compare as comparison
    from chipaudit.report.model import write_atomic

    check_outputs((json_path, "--json", Kind.file))
    if len(reports) < 2:
        raise UsageError("compare needs at least two reports")
    with usage_errors(comparison.ReportInputError):
        columns = [comparison.Column(str(p), comparison.load_report(p)) for p in reports]
        result = comparison.build(columns)
    comparison.render(result, console)
    if json_path is not None:
        write_atomic(json_path, comparison.dumps(result))
        say(f"comparison: {json_path}")
    summary = result["summary"]
    raise typer.Exit(FAIL if summary["regressions"] or summary["worse_checks"] else 0)
