"""Commands that judge models: eval, compare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from shoal.cli.app import VERDICT_EXIT_CODES, VERDICTS_GIVEN, app
from shoal.errors import ShoalError


@app.command("eval")
def evaluate(model: Annotated[Path, typer.Argument(help="Run folder or exported bundle.")],
             data: Annotated[list[str] | None, typer.Option(
                 help="Documents to evaluate on (repeatable; default: a run's validation split).")] = None,
             suite: Annotated[str, typer.Option(help="default: quality, calibration, robustness, efficiency and cost; "
                                                     "quick: quality and calibration.")] = "default",
             hardware: Annotated[str | None, typer.Option(
                 help="Price-table row of the machine running this (default: guessed from the device).")] = None,
             prices: Annotated[Path | None, typer.Option(help="Your own hardware price table (TOML).")] = None,
             adversarial_tries: Annotated[int, typer.Option(help="Seeds per perturbation the adversary tries.")] = 2,
             dtype: Annotated[str, typer.Option(help="Precision of the speed measurements: auto (bf16 where faster), "
                                                     "fp32, bf16.")] = "auto",
             out: Annotated[Path, typer.Option(help="Report folder.")] = Path("eval")) -> None:
    """Quality, calibration, robustness, speed and cost of a model on held-out documents; writes a report."""
    from shoal.bundle import load_model
    from shoal.eval.data import evaluation_documents
    from shoal.eval.report import write_report
    from shoal.eval.suite import check_options, run_suite
    from shoal.io import check_can_create_dir

    check_options(suite, hardware, prices, adversarial_tries, dtype)  # before the model loads
    check_can_create_dir(out)
    loaded = load_model(model)
    description, documents = evaluation_documents(loaded, data or [])
    summary = run_suite(loaded, list(documents), suite, hardware, prices, adversarial_tries, dtype, progress=True)
    write_report(summary, {k: v for k, v in loaded.info.items() if k != "config"} | {"source": str(model)},
                 description, out)
    q = summary["quality"]
    typer.echo(f"{summary['documents']:,} documents, {summary['tokens']:,} tokens: loss {q['loss']['value']:.4f}, "
               f"bits/byte {q['bits_per_byte']['value']:.4f}, top-1 {q['top1_accuracy']['value']:.1%}, ECE "
               f"{summary['calibration']['ece_equal_width']:.4f}"
               + (f", worst perturbation {summary['robustness'].get('worst')}" if "robustness" in summary else "")
               + (f", {summary['efficiency']['decode_tokens_per_second']:,.0f} tokens/s decoding"
                  if "efficiency" in summary else "") + f"; report in {out}/report.md")


@app.command()
def compare(candidate: Annotated[Path, typer.Argument(help="The new model: run folder or bundle.")],
            baseline: Annotated[Path, typer.Argument(help="The model it must not be worse than.")],
            data: Annotated[list[str] | None, typer.Option(
                help="Documents to compare on (repeatable; default: the baseline run's validation split).")] = None,
            fail_on: Annotated[str, typer.Option(
                help="Comma-separated metrics that gate the verdict.")] = "bits_per_byte,top1_accuracy",
            margin: Annotated[list[str] | None, typer.Option(
                help="How much worse a metric may be: METRIC=VALUE (repeatable), e.g. bits_per_byte=0.02.")] = None,
            min_documents: Annotated[int, typer.Option(help="Fewer documents than this is always inconclusive.")] = 10,
            resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 2000,
            out: Annotated[Path, typer.Option(help="Report folder.")] = Path("compare")) -> None:
    """Paired comparison on the same documents; exit 0 pass, 1 regression, 2 inconclusive, 3 bad input."""
    try:
        verdict = _compare(candidate, baseline, data or [], fail_on, margin or [], min_documents, resamples, out)
    except Exception as e:  # noqa: BLE001 -- whatever went wrong, CI must not read it as a verdict
        message = str(e) if isinstance(e, ShoalError) else f"{type(e).__name__}: {e}"
        typer.secho(f"error: {message}", err=True, fg="red")
        raise typer.Exit(3) from None
    VERDICTS_GIVEN.append(verdict)
    raise typer.Exit(VERDICT_EXIT_CODES[verdict])


def _compare(candidate: Path, baseline: Path, data: list[str], fail_on: str, margins: list[str], min_documents: int,
             resamples: int, out: Path) -> str:
    from shoal.bundle import load_model
    from shoal.data.progress import PhaseProgress
    from shoal.eval.compare_report import write_comparison
    from shoal.eval.data import evaluation_documents
    from shoal.eval.gate import check_comparable, compare_scores, parse_fail_on, parse_margins
    from shoal.eval.scoring import score_documents
    from shoal.io import check_can_create_dir

    gates, margin_values = parse_fail_on(fail_on), parse_margins(margins)
    if min_documents < 1 or resamples < 100:
        raise ShoalError("--min-documents must be at least 1 and --resamples at least 100")
    check_can_create_dir(out)
    base, cand = load_model(baseline), load_model(candidate)
    same_tokenizer = json.loads(cand.tokenizer.to_str()) == json.loads(base.tokenizer.to_str())
    check_comparable(gates, same_tokenizer)
    description, documents = evaluation_documents(base, data)
    documents = list(documents)  # the same documents for both models
    total = sum(len(text.encode("utf-8")) for _, text in documents)
    with PhaseProgress(True) as bar:
        scores = []
        for name, loaded in (("candidate", cand), ("baseline", base)):
            bar.phase(f"scoring the {name}", total)
            scores.append(score_documents(loaded.model, loaded.tokenizer, documents, on_bytes=bar.advance))
    result = compare_scores(*scores, gates, margin_values,
                            same_tokenizer=same_tokenizer,
                            resamples=resamples, min_documents=min_documents)
    write_comparison(result, str(candidate), str(baseline), description, out)
    for name in result["fail_on"]:
        m = result["metrics"][name]
        low, high = m["harm_ci"]
        typer.echo(f"{name}: {m['baseline']:.4f} -> {m['candidate']:.4f}, harm {m['harm']:+.4f} "
                   f"[{low:+.4f}, {high:+.4f}] vs margin {m['margin']:g}: {m['verdict']}")
    typer.echo(f"{result['verdict'].upper()} on {result['documents']} documents; report in {out}/compare.md")
    return result["verdict"]
