"""`cost --by-kind`: the total row holds the spec's totals, each in its own column."""

from __future__ import annotations

import archlab
from archlab.cli import main
from archlab.cli.cost import flops, nbytes


def test_total_row_columns(capsys):
    assert main(["cost", "specs/paper/rat.yaml", "--by-kind"]) == 0
    total = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("total"))
    c = archlab.cost("specs/paper/rat.yaml")
    cells = [x.strip() for x in total.split("  ") if x.strip()]
    assert cells[3:] == [
        flops(c.fwd_flops),
        flops(c.fwd_other_flops),
        flops(c.train_flops),
        flops(c.decode_flops),
        nbytes(c.cache_bytes),
        nbytes(c.decode_bytes),
    ]
