"""A forgiving CLI: key=value overrides anywhere after the command, `cocoseg config show`, the
`retrain` and `demo` commands, and an example line closing every command's --help."""

from __future__ import annotations

import argparse

import pytest
import yaml

from cocoseg.cli import EXAMPLES, build_parser, parse_args, split_overrides
from cocoseg.config import load_config, to_dict


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = dict(sub.choices)
    config = next(a for a in out["config"]._actions if isinstance(a, argparse._SubParsersAction))
    out["config show"] = config.choices["show"]
    return out


def test_every_commands_help_ends_with_an_example_line() -> None:
    commands = _commands()
    assert {"retrain", "demo", "config", "config show"} <= set(commands)
    assert set(EXAMPLES) == set(commands) - {"config show"}  # no command without its example
    assert build_parser().format_help().rstrip().splitlines()[-1].startswith("example: cocoseg train ")
    for name, command in commands.items():
        last = command.format_help().rstrip().splitlines()[-1]
        assert last.startswith(f"example: cocoseg {name.split()[0]} "), (name, last)


@pytest.mark.parametrize("argv, source, dest, overrides", [
    (["ingest", "src", "dst", "a.b=1"], "src", "dst", ["a.b=1"]),
    (["ingest", "a.b=1", "src", "--config", "c.yaml", "dst", "x.y=[1, 2]"], "src", "dst", ["a.b=1", "x.y=[1, 2]"]),
    (["--verbose", "ingest", "--config=c.yaml", "src", "ingest.source=s3://b/k=v", "dst"], "src", "dst",
     ["ingest.source=s3://b/k=v"]),
    (["ingest", "s3://bucket/a=b", "./out=1", "--config", "c.yaml"], "s3://bucket/a=b", "./out=1", []),
])
def test_overrides_are_taken_from_anywhere_after_the_command(argv, source, dest, overrides) -> None:
    args = parse_args(build_parser(), argv)
    assert (args.source, args.dest, args.overrides) == (source, dest, overrides)
    assert args.config in (None, "c.yaml")


def test_an_option_value_and_what_follows_double_dash_stay_put() -> None:
    parser = build_parser()
    rest, found = split_overrides(parser, ["promote", "m", "3", "--reason", "a.b=c", "tracking.x=1"])
    assert rest == ["promote", "m", "3", "--reason", "a.b=c"] and found == ["tracking.x=1"]
    args = parse_args(parser, ["infer", "w", "src", "--out", "dest", "evaluate.chunk_images=8", "--split", "val"])
    assert args.out == ["dest"] and args.overrides == ["evaluate.chunk_images=8"] and args.split == "val"
    assert split_overrides(parser, ["train", "--", "a.b=1"]) == (["train", "--", "a.b=1"], [])
    with pytest.raises(SystemExit) as exit_:  # a command without overrides says so (argparse: status 2)
        parse_args(parser, ["model-info", "n", "train.epochs=3"])
    assert exit_.value.code == 2


def test_config_show_prints_the_resolved_config_with_secrets_redacted(cli) -> None:
    out = cli("config", "show", "data.repeat_factor_threshold=0.01", "--config", "pipelines/configs/train.yaml",
              "tracking.tracking_uri=http://bob:s3cret@mlflow:5000", "--section", "tracking", "train.epochs=7").stdout
    assert "s3cret" not in out and "http://bob:***@mlflow:5000" in out
    assert list(yaml.safe_load(out)) == ["tracking"]
    whole = yaml.safe_load(cli("config", "show", "--config", "pipelines/configs/train.yaml", "train.epochs=7",
                               "data.repeat_factor_threshold=0.01").stdout)
    want = to_dict(load_config("pipelines/configs/train.yaml", ["train.epochs=7", "data.repeat_factor_threshold=0.01"]))
    assert whole == want and whole["train"]["epochs"] == 7
    bad = cli("config", "show", "data.repeat_factor_threshold=2", check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "cocoseg config: error: data.repeat_factor_threshold: must be in [0, 1] (a fraction of the training "
        "images; 0: off), got 2.0"]


def test_train_retrain_and_demo_take_overrides_after_options(cli, tmp_path) -> None:
    """Each job resolves its config from overrides given after its options (a bad key: one line, exit 2,
    before anything runs); `demo` runs pipelines.demo, which says the same."""
    for command in (["train", "--config", "pipelines/configs/train.yaml"], ["retrain"],
                    ["demo", "--root", str(tmp_path), "--images", "8"]):
        res = cli(*command, "train.epochz=3", check=False)
        assert res.returncode == 2, (command, res.stderr)
        assert "unknown config key 'train.epochz'. Did you mean 'epochs'" in res.stderr.strip().splitlines()[-1]
