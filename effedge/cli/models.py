"""effedge models, effedge info: the zoo and the scaled architecture."""
from __future__ import annotations

import click

from effedge.cli.main import cli
from effedge.cli.options import PHI_RANGE, FiniteFloatRange, human, print_json, table


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def models(as_json: bool) -> None:
    """List every named variant with its scaling, params and MACs.

    \b
    MACs are multiply-adds of convolutions and linear layers for one image at the
    variant's native resolution, as the papers count them.
    \b
    Examples:
      effedge models
      effedge models --json | jq '.[] | select(.family=="efficientdet") | .macs'
    """
    from effedge.arch.zoo import model_table

    rows = model_table()
    if as_json:
        print_json(rows)
        return
    table("effedge model zoo", ["variant", "φ", "input", "width", "depth", "BiFPN ch", "BiFPN layers", "heads",
                                 "levels", "act", "input norm", "params", "MACs"],
           [[r["variant"], f"{r['phi']:g}", r["resolution"], f"{r['width']:g}", f"{r['depth']:g}",
             r["bifpn_channels"], r["bifpn_layers"], r["head_layers"], r["levels"], r["activation"],
             r["normalization"]["label"], human(r["params"]), human(r["macs"])] for r in rows])


@cli.command()
@click.argument("variant", required=False)
@click.option("--phi", type=FiniteFloatRange(*PHI_RANGE), help="Custom compound coefficient φ (0–7) instead of a named variant.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(variant: str | None, phi: float | None, as_json: bool) -> None:
    """Print the full scaled architecture of VARIANT (b0..b7, d0..d7x, lite0..lite4, d-lite0..d-lite4,
    d-lite3x) or of --phi X.

    \b
    Examples:
      effedge info d0
      effedge info --phi 1.5 --json
    """
    from effedge.arch.zoo import architecture

    if (variant is None) == (phi is None):
        raise click.UsageError("give a VARIANT or --phi, not both and not neither")
    arch = architecture(variant if variant is not None else phi)
    if as_json:
        print_json(arch)
        return
    lines = [f"{arch['variant']} ({arch['family']}, φ={arch['phi']:g}): input {arch['resolution']}, "
             f"params {human(arch['params'])}, MACs {human(arch['macs'])}",
             f"{'Lite: ' if arch['lite'] else ''}activation {arch['activation']}, input normalization "
             f"{arch['normalization']['label']} ((p/255 − mean) / std)"]
    bb = arch["backbone_stages"]
    lines.append(f"backbone {bb['name']}: width ×{bb['width']:.4g}, depth ×{bb['depth']:.4g}, "
                 f"stem {bb['stem_channels']} ch, head {bb['head_channels']} ch")
    if arch["bifpn_channels"]:
        lines.append(f"BiFPN: {arch['bifpn_channels']} ch × {arch['bifpn_layers']} layers, fusion {arch['fusion']}, "
                     f"levels {arch['levels']}; heads: {arch['head_layers']} layers")
        anchors = arch["anchors"]
        lines.append(f"anchors: {anchors['per_location']} per location (scale {anchors['scale']:g}), "
                     f"{anchors['total']} in all; pyramid "
                     + ", ".join(f"{p['level']} {p['size']}²" for p in arch["pyramid"]))
    click.echo("\n".join(lines))
    table("backbone stages", ["stage", "block", "repeats", "kernel", "stride", "expansion", "in", "out", "SE",
                               "output"],
           [[s["stage"], s["block"], s["repeats"], s["kernel"], s["stride"], s["expansion"], s["in_channels"],
             s["out_channels"], s["se_channels"], f"{s['output_size']}²"] for s in bb["stages"]])
