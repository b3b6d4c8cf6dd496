"""Bad input keeps the exit-code contract: every malformed option, `--set` or config value exits 2.

Exit 1 is reserved for GateFailed and 3 for crashes, so CI must never read a typo as a failed gate.
Each message names the key or option, the value received and the fix (docs/ERRORS.md, entries 26-29).
None of these cases starts the flow: they fail in `flow_parameters`, before any server, download or
model load.
"""

from __future__ import annotations

import math

import pytest

from beear_stage.config import BEEARConfig
from beear_stage.exceptions import ConfigError

RUN = ["run", "--checkpoint", "zoo:suffix"]


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        ([*RUN, "--set", "layer=[1]"], ["`layer`", "[1]", "Fix:"]),
        ([*RUN, "--set", "rounds="], ["`rounds`", "None", "Fix:"]),
        ([*RUN, "--set", "layer=null"], ["`layer`", "None", "Fix:"]),
        ([*RUN, "--set", "layer=1.5"], ["`layer`", "1.5", "integer", "Fix:"]),
        ([*RUN, "--set", "layer=true"], ["`layer`", "True", "integer", "Fix:"]),
        ([*RUN, "--set", "divergence_loss=.nan"], ["`divergence_loss`", "nan", "finite", "Fix:"]),
        ([*RUN, "--set", "outer_lr=.inf"], ["`outer_lr`", "inf", "finite", "Fix:"]),
        ([*RUN, "--set", "max_grad_norm=-1"], ["`max_grad_norm`", "-1.0", "Fix:"]),
        ([*RUN, "--set", "k=1000000000"], ["`k`", "1000000000", "Fix:"]),
        ([*RUN, "--gate", "asr_max=abc"], ["`asr_max`", "'abc'", "Fix:"]),
        ([*RUN, "--gate", "asr_maks=0.1"], ["asr_maks", "Fix:"]),
        ([*RUN, "--eval-limit", "-5"], ["`--eval-limit`", "-5", "Fix:"]),
        (["run", "--checkpoint", ""], ["`--checkpoint`", "''", "current directory", "Fix:"]),
        (["run", "--checkpoint", "  "], ["`--checkpoint`", "Fix:"]),
        ([*RUN, "--publish-to", "not a repo"], ["`--publish-to`", "'not a repo'", "Fix:"]),
        ([*RUN, "--output-dir", ""], ["`--output-dir`", "Fix:"]),
    ],
)
def test_malformed_options_exit_2_naming_key_value_and_fix(argv, names, capsys):
    from flows.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for name in names:
        assert name in err, f"{name!r} missing from: {err}"


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        ([*RUN, "--set", "layer=[1"], ["`layer`", "'[1'", "not a YAML value", "Fix:"]),
        ([*RUN, "--set", "=3"], ["KEY=VALUE", "'=3'", "Fix:"]),
        ([*RUN, "--set", "rounds"], ["KEY=VALUE", "'rounds'", "Fix:"]),
        ([*RUN, "--eval-limit", "abc"], ["--eval-limit", "'abc'"]),
    ],
)
def test_unparseable_options_are_argparse_errors_exit_2(argv, names, capsys):
    from flows.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for name in names:
        assert name in err, f"{name!r} missing from: {err}"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"layer": 1.5}, r"`layer` = 1.5: expected an integer"),
        ({"layer": [1]}, r"`layer` = \[1\]: expected an integer"),
        ({"layer": None}, r"`layer` = None: expected an integer"),
        ({"rounds": True}, r"`rounds` = True: expected an integer"),
        ({"k": 10**9}, r"`k` = 1000000000: outside \[1, 4096\]"),
        ({"divergence_loss": math.nan}, r"`divergence_loss` = nan: expected a finite number"),
        ({"divergence_loss": -1.0}, r"`divergence_loss` = -1.0: outside"),
        ({"max_grad_norm": math.nan}, r"`max_grad_norm` = nan"),
        ({"max_grad_norm": -0.5}, r"`max_grad_norm` = -0.5: outside"),
        ({"weight_decay": -0.1}, r"`weight_decay` = -0.1: outside"),
        ({"weight_decay": math.inf}, r"`weight_decay` = inf"),
        ({"delta_max_norm": math.nan}, r"`delta_max_norm` = nan"),
        ({"delta_max_norm": -2.0}, r"`delta_max_norm` = -2.0"),
        ({"inner_lr": math.inf}, r"`inner_lr` = inf"),
        ({"outer_lr": math.inf}, r"`outer_lr` = inf"),
        ({"outer_lr": 50.0}, r"`outer_lr` = 50.0: outside \[0, 1\]"),
        ({"outer_lr": "nan"}, r"`outer_lr` = nan"),
        ({"alpha": math.nan}, r"`alpha` = nan"),
        ({"alpha": -1.0}, r"`alpha` = -1.0"),
        ({"seed": -1}, r"`seed` = -1"),
        ({"max_new_tokens": 10**7}, r"`max_new_tokens` = 10000000: outside"),
        ({"gradient_checkpointing": "yes"}, r"`gradient_checkpointing` = 'yes': expected true or false"),
        ({"refusal_keywords": "sorry"}, r"`refusal_keywords` = 'sorry': expected a list"),
        ({"method": 3}, r"`method` = 3: expected a string"),
    ],
)
def test_config_refuses_wrong_types_nan_negative_and_absurd_values(overrides, match):
    with pytest.raises(ConfigError, match=match) as err:
        BEEARConfig.from_dict(overrides)
    assert "Fix:" in str(err.value)


def test_config_keeps_valid_values_and_normalises_numbers():
    cfg = BEEARConfig.from_dict(
        {"outer_lr": 1, "inner_lr": "0.2", "delta_max_norm": None, "max_grad_norm": 0}
    )
    assert cfg.outer_lr == 1.0 and isinstance(cfg.outer_lr, float)
    assert cfg.inner_lr == 0.2 and cfg.delta_max_norm is None and cfg.max_grad_norm == 0.0
    assert BEEARConfig.from_dict(cfg.to_dict()) == cfg


def test_bad_input_reaching_the_flow_directly_is_a_config_error():
    """A deployment run bypasses the CLI: the flow checks the same options before any work."""
    from flows.release import check_release_options

    ok = {
        "checkpoint": "zoo:suffix",
        "eval_limit": 0,
        "publish_to": "",
        "registry_name": "r",
        "output_dir": "o",
    }
    check_release_options(**ok)
    for change, match in (
        ({"checkpoint": ""}, "`--checkpoint` = ''"),
        ({"eval_limit": -5}, "`--eval-limit` = -5"),
        ({"publish_to": "a/b;rm"}, "`--publish-to` = 'a/b;rm'"),
    ):
        with pytest.raises(ConfigError, match=match):
            check_release_options(**{**ok, **change})
