"""Every unknown option value gets a did-you-mean: argparse's choices (commands, --dtype)
and free-form values (--device)."""

from __future__ import annotations

import pytest

from archlab.cli import main

TINY = "specs/tiny/rat.yaml"


@pytest.mark.parametrize(
    "argv,hint",
    [
        (["valdate", TINY], "did you mean 'validate'?"),
        (["build", TINY, "--dtype", "bfloat"], "did you mean 'bfloat16'?"),
        (["build", TINY, "--device", "cdua"], "did you mean 'cuda'?"),
        (["profile", TINY, "--device", "cpuu"], "did you mean 'cpu'?"),
        (["profile", TINY, "--mode", "trian"], "did you mean 'train'?"),
    ],
)
def test_unknown_values_get_a_suggestion(capsys, argv, hint):
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        status = e.code
    assert status == 2
    assert hint in capsys.readouterr().err
