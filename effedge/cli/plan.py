"""effedge profile list/fit, effedge select: latency profiles and model selection."""
from __future__ import annotations

import click

from effedge.cli.main import cli
from effedge.cli.options import PHI_RANGE, FiniteFloatRange, InputFile, image_size_option, print_json, progress, \
    table


@cli.group()
def profile() -> None:
    """Latency profiles: list, check, and fit them to measurements.

    \b
    Shipped profiles live in the package's profiles/ folder; `profile fit` and self-calibration write
    fitted copies to $EFFEDGE_PROFILE_DIR (default ~/.config/effedge/profiles), which are used first.
    \b
    Examples:
      effedge profile list
      effedge bench --variants d0,d1,d2 --precisions fp32 --json > bench.json
      effedge profile fit cpu-local bench.json
    """


def _model_summary(prof) -> str:
    if not prof.fits:
        return "priors" if prof.priors else "generic priors"
    return ", ".join(f"{precision}: {'calibrated' if f.method == 'self-calibration' else 'fitted'} "
                     f"({len(f.points)} pt)" for precision, f in prof.fits.items())


@profile.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def profile_list(as_json) -> None:
    """Validate and list the profiles: shipped ones, and fitted copies in the user profile directory.

    \b
    Examples:
      effedge profile list
      effedge profile list --json
    """
    from effedge.plan.profiles import all_profiles, load_profile, user_profiles

    shipped, user = all_profiles(), user_profiles()
    rows = [(path, "shipped, overridden" if path.stem in {u.stem for u in user} else "shipped") for path in shipped]
    rows += [(path, "user copy" if path.stem in {s.stem for s in shipped} else "user") for path in user]
    profiles = [(load_profile(path), origin) for path, origin in rows]
    if as_json:
        print_json([{"profile": p.name, "origin": origin, "path": str(p.path), "device": p.device.name,
                      "backend": p.software.backend, "budget_ms": p.target.latency_ms,
                      "percentile": p.target.percentile, "precision": p.target.precision,
                      "priors_source": p.priors.source if p.priors else None,
                      "fits": {k: f.model_dump() for k, f in p.fits.items()}} for p, origin in profiles])
        return
    table("profiles", ["profile", "origin", "device", "backend", "budget ms", "percentile", "precision", "model"],
           [[p.name, origin, p.device.name, p.software.backend, f"{p.target.latency_ms:g}", p.target.percentile,
             p.target.precision, _model_summary(p)] for p, origin in profiles])
    if user:
        click.echo(f"user profiles: {user[0].parent}")


@profile.command("fit")
@click.argument("name")
@click.argument("results", nargs=-1, required=True, type=InputFile("json"))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def profile_fit(name, results, as_json) -> None:
    """Fit profile NAME to `effedge bench --json` RESULTS (per precision) and store the fit and the measured
    points in a copy of the profile in the user profile directory (the shipped file is never changed).

    Only results measured with the profile's NMS tail count (bench with --nms as the profile deploys).

    \b
    Examples:
      effedge bench --variants d0,d1,d2 --precisions int8 --nms efficientnms --json > bench.json
      effedge profile fit orin-nx-16gb bench.json
      effedge profile fit cpu-local fp32.json fp16.json --json
    """
    from effedge.plan.latency import FIT_TOLERANCE, TERMS, fit_profile

    report = fit_profile(name, list(results))
    if as_json:
        print_json(report)
        return
    click.echo(f"wrote {report['written_to']}")
    if report["left_out"]:
        click.echo(f"note: left out {len(report['left_out'])} result(s) measured with another NMS tail than "
                   f"{report['profile']}'s ({report['nms']}): " + ", ".join(r["label"] for r in report["left_out"]),
                   err=True)
    for precision, fitted in report["fits"].items():
        weights = ", ".join(f"{term} ×{fitted[term]:.3g}" for term in TERMS)
        click.echo(f"{report['profile']} {precision} ({len(fitted['points'])} points at {fitted['percentile']}): "
                   f"weights {weights} on the prior roofline, within {fitted['shape_error']:.1%} of the points; "
                   "per-point corrections make the fit reproduce them")
        for point in fitted["points"]:
            click.echo(f"  {point['label']}: measured {point['measured_ms']:.2f} ms, fit {point['predicted_ms']:.2f} "
                       f"ms ({point['error'] * 100:+.1f} %), weighted roofline alone {point['roofline_ms']:.2f} ms")
        if fitted["shape_error"] > FIT_TOLERANCE:
            click.echo(f"note: the roofline's shape misses a point by {fitted['shape_error']:.0%}; between measured "
                       "points the corrections interpolate, beyond them the nearest point's correction holds "
                       "(a busy machine? bench again)", err=True)


def _accuracy_cell(candidate) -> str:
    """AP as published, or marked with ~ where it is interpolated (a custom φ)."""
    if candidate.accuracy is None:
        return "-"
    return f"{'~' if candidate.accuracy_source == 'interpolated' else ''}{candidate.accuracy:.1f}"


@cli.command("select")
@click.option("--profile", "profile_name", required=True, help="Profile name (profiles/NAME.yaml) or file.")
@click.option("--latency-ms", type=FiniteFloatRange(0, 1e6, min_open=True), help="Latency budget instead of the profile's.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "mixed"]), help="Instead of the profile's.")
@click.option("--step", type=FiniteFloatRange(0, PHI_RANGE[1], min_open=True), default=0.5, show_default=True, help="φ grid step for custom candidates.")
@click.option("--family", type=click.Choice(["d", "lite", "all"]), default="all", show_default=True,
              help="Candidates: d (D0-D7x and custom φ), lite (EfficientDet-Lite0-4, Lite3x), or all.")
@image_size_option("Cost every candidate at this input size (square) instead of its own; a multiple of its size "
                   "multiple (128 for D0-D7 and custom φ, 256 for d7x, 32 for the Lites; others are left out).")
@click.option("--verify", is_flag=True, help="Compile and benchmark the choice with the profile's backend on this "
              "machine; while it misses the budget, the next smaller candidate; once one meets it, also the next "
              "larger one (to show the budget is tight).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def select_command(profile_name, latency_ms, precision, step, family, imgsz, verify, as_json) -> None:
    """Choose the most accurate EfficientDet (D0-D7x, fractional φ, or EfficientDet-Lite) that meets a profile's
    latency budget, and report its accuracy: COCO AP as published, or interpolated on φ for a custom one.

    Candidates are costed from their architecture (milliseconds). An unfitted CPU profile (cpu-local) first
    calibrates itself by timing D0 and D1 on this machine (seconds, once per precision); device profiles
    predict from published-measurement priors until fitted.

    \b
    Examples:
      effedge select --profile orin-nx-16gb
      effedge select --profile orin-nx-16gb --imgsz 384 --precision fp16
      effedge select --profile orin-nano-8gb --family lite
      effedge select --profile cpu-local --latency-ms 150 --verify
    """
    import sys
    from dataclasses import asdict

    from effedge.arch.accuracy import COCO_AP
    from effedge.errors import EffedgeError
    from effedge.pipeline.compile import choose_backend
    from effedge.pipeline.measure import calibrated, verify_choice
    from effedge.plan.latency import describe_model, select
    from effedge.plan.profiles import load_profile

    prof = load_profile(profile_name)
    if verify:  # it compiles and measures here: refuse before calibrating or costing anything
        try:
            choose_backend(prof.software.backend)
        except EffedgeError as exc:  # the cause, without compile's --backend advice (select has no --backend)
            raise EffedgeError(f"--verify measures on this machine, which cannot run {prof.name}'s backend "
                               f"({exc.__cause__ or exc}); run it on the device, or drop --verify") from exc
    precision = precision or prof.target.precision
    prof = calibrated(prof, precision, log=progress)
    candidates, choice = select(prof, latency_ms=latency_ms, precision=precision, step=step, image_size=imgsz,
                                family=family, log=progress)
    budget = latency_ms or prof.target.latency_ms
    note = describe_model(prof, precision)
    verification = (verify_choice(prof, candidates, choice, budget, precision, image_size=imgsz, log=progress)
                    if verify else None)
    nothing_fits = (f"error: no candidate meets {budget:g} ms on {prof.name} at {precision}; raise --latency-ms "
                    "or choose a faster --precision")
    if as_json:
        print_json({"profile": prof.name, "budget_ms": budget, "image_size": imgsz, "family": family,
                     "accuracy_metric": COCO_AP, "model": note,
                     "candidates": [asdict(c) for c in candidates],
                     "choice": asdict(choice) if choice else None, "verification": verification})
        if choice is None:
            click.echo(nothing_fits, err=True)
            sys.exit(1)
        return
    table(f"{prof.name}: budget {budget:g} ms at {prof.target.percentile} (margin {prof.target.margin:.0%})",
           ["candidate", "φ", "input", "GMACs", "ms", "source", "AP", "fits"],
           [[c.name, f"{c.phi:g}", c.resolution, f"{c.macs / 1e9:.2f}", f"{c.predicted_ms:.1f}", c.source,
             _accuracy_cell(c), "yes" if c.fits else "no"] for c in candidates])
    click.echo(note)
    if any(c.accuracy_source == "interpolated" for c in candidates):
        click.echo(f"AP: {COCO_AP} as published; ~ interpolated on φ between the named D variants (a custom φ was "
                   "never trained)")
    if imgsz:
        click.echo(f"every candidate costed at {imgsz} px (--imgsz), not at its own input size: the AP figures are "
                   "each variant's at its own size, so the choice is the one with the most compute that fits")
    if choice is None:
        click.echo(nothing_fits, err=True)
        sys.exit(1)
    click.echo(f"choice: {choice.name} (φ={choice.phi:g}, {choice.resolution}px), {COCO_AP} "
               + (f"{choice.accuracy:.1f} ({choice.accuracy_basis})" if choice.accuracy is not None else "unknown"))
    if verification:
        for step_result in verification["steps"]:
            click.echo(f"  measured {step_result['name']}: {step_result['measured_ms']:.1f} ms "
                       f"({'within' if step_result['within_budget'] else 'over'} {budget:g} ms)")
        click.echo(f"verified choice: {verification['choice']}")
