"""The one declaration of the decoding options and the forms derived from it: the command-line
flags, the server's request model with its bounds, and the validation."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import typing

import pydantic
import pytest

from transformer.cli import main
from transformer.config import ConfigError, Limits, setting
from transformer.decoding.cli import add_decode_arguments, decode_options
from transformer.decoding.options import (
    DecodeOptions,
    api_fields,
    cli_fields,
    options_from_flags,
)
from transformer.decoding.search import LENGTH_PENALTIES
from transformer.serve import schemas
from transformer.serve.schemas import DecodeParams, request_model, server_limits
from transformer.serve.settings import ServeSettings

FIELDS = {f.name: f for f in dataclasses.fields(DecodeOptions)}
HINTS = typing.get_type_hints(DecodeOptions)


def parser_for(options: type[DecodeOptions] = DecodeOptions) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transformer translate")
    add_decode_arguments(parser, options)
    return parser


def parse(argv: list[str], options: type[DecodeOptions] = DecodeOptions) -> dict:
    """Every option's value after these flags (the defaults for those not given)."""
    args = parser_for(options).parse_args(["--model", "m", *argv])
    return options_from_flags(args, options)


def given(argv: list[str], options: type[DecodeOptions] = DecodeOptions) -> dict:
    """The options these flags give, as the commands pass them on (see `Translator.options`)."""
    return decode_options(parser_for(options).parse_args(["--model", "m", *argv]), options)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ----------------------------------------------------------------------------- command line


def test_every_option_but_the_library_knobs_is_a_flag_with_the_fields_default() -> None:
    assert set(FIELDS) - {f.name for f in cli_fields()} == {"max_sentences", "use_cache"}
    assert parse([]) == {f.name: f.default for f in cli_fields()}
    assert given([]) == {}  # a model directory's task defaults (a parser's beam 21) apply


def test_the_commands_pass_on_the_options_given_even_when_equal_to_a_default() -> None:
    assert given(["--beam", "4", "--greedy"]) == {"beam": 4, "method": "greedy"}
    assert given(["--alpha", "0.6", "--max-len-b", "50"]) == {"alpha": 0.6, "max_len_b": 50}
    assert "(default 4)" in parser_for().format_help().replace("\n", " ").replace("  ", " ")


def test_options_given_alone_are_checked_but_their_relations_wait_for_the_model() -> None:
    with pytest.raises(ConfigError, match="beam"):
        given(["--beam", "0"])
    # nbest 8 > the paper's beam 4, but a parser's model directory sets beam 21
    assert given(["--nbest", "8"]) == {"nbest": 8}
    with pytest.raises(ConfigError, match="nbest"):
        DecodeOptions.from_kwargs(given(["--nbest", "8"]))
    flags = set(parser_for()._option_string_actions)
    for f in cli_fields():
        switches = f.metadata.get("choice_flags")
        assert (set(map(flag, switches)) if switches else {flag(f.name)}) <= flags, f.name


@pytest.mark.parametrize(
    "module", ["transformer.decoding.cli", "transformer.evaluation.cli", "transformer.visualize"]
)
def test_translate_evaluate_and_visualize_offer_every_flag(module: str) -> None:
    parser = argparse.ArgumentParser()
    importlib.import_module(module).add_arguments(parser)
    flags = parser._option_string_actions
    for f in cli_fields():
        switches = f.metadata.get("choice_flags")
        if switches:
            assert all(flags[flag(choice)].default is False for choice in switches), f.name
        else:
            default = flags[flag(f.name)].default  # wrapped: told apart from a given value
            assert str(default) == str(f.default) and default.value == f.default, f.name


def test_flags_set_their_field_with_its_type() -> None:
    argv = ["--beam", "5", "--alpha", "1", "--length-penalty", "power", "--nbest", "2"]
    argv += ["--max-len-a", "1.5", "--max-len-b", "7", "--min-len", "2", "--no-repeat-ngram", "3"]
    argv += ["--temperature", "0.5", "--top-k", "9", "--top-p", "0.8", "--seed", "11"]
    argv += ["--max-tokens", "100", "--sample"]
    expected = dict(beam=5, alpha=1.0, length_penalty="power", nbest=2, max_len_a=1.5)
    expected |= dict(max_len_b=7, min_len=2, no_repeat_ngram=3, temperature=0.5, top_k=9)
    expected |= dict(top_p=0.8, seed=11, max_tokens=100, method="sample")
    got = parse(argv)
    assert got == expected
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in expected.items()}
    assert parse(["--greedy"])["method"] == "greedy"


def test_method_switches_exclude_each_other_and_choices_are_checked() -> None:
    with pytest.raises(SystemExit):
        parse(["--greedy", "--sample"])
    with pytest.raises(SystemExit):
        parse(["--length-penalty", "fancy"])
    choices = parser_for()._option_string_actions["--length-penalty"].choices
    assert list(choices) == list(LENGTH_PENALTIES)


def test_help_shows_each_fields_help_and_default() -> None:
    text = " ".join(parser_for().format_help().split())
    for f in cli_fields():
        for line in f.metadata.get("choice_flags", {f.name: f.metadata["help"]}).values():
            assert " ".join((line % {"default": f.default}).split()) in text, f.name
    assert "beam size (default 4)" in text and "per batch (4096)" in text


def test_translate_names_a_bad_option_before_loading_anything(tmp_path, capsys) -> None:
    code = main(["translate", "--model", str(tmp_path / "absent"), "--beam", "0", "--top-p", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "beam: must be >= 1, got 0" in err and "top_p: must be in (0, 1], got 2.0" in err
    assert "not a directory" not in err


# ---------------------------------------------------------------------------- request model


def test_every_option_but_the_server_knobs_is_a_request_field_with_the_fields_default() -> None:
    assert set(FIELDS) - {f.name for f in api_fields()} == {
        "max_tokens",
        "max_sentences",
        "use_cache",
    }
    model_fields = DecodeParams.model_fields
    assert list(model_fields) == [f.name for f in api_fields()]
    for f in api_fields():
        assert model_fields[f.name].default == f.default, f.name
        assert model_fields[f.name].annotation == HINTS[f.name], f.name
        assert model_fields[f.name].description, f.name
    assert DecodeParams.model_config["strict"] is True
    assert DecodeParams.model_config["extra"] == "forbid"
    assert DecodeParams.model_config["allow_inf_nan"] is False


def test_request_model_is_strict_and_lists_the_choices() -> None:
    properties = DecodeParams.model_json_schema()["properties"]
    assert properties["method"]["enum"] == ["beam", "greedy", "sample"]
    assert properties["length_penalty"]["enum"] == list(LENGTH_PENALTIES)
    for bad in ({"beam": "4"}, {"beam": True}, {"alpha": float("nan")}, {"beem": 4}):
        with pytest.raises(pydantic.ValidationError):
            DecodeParams(**bad)


# Every bound the server adds, as (lowest, highest) allowed; beam and nbest follow max_beam.
SERVER_BOUNDS = {
    "beam": (1, "max_beam"),
    "nbest": (1, "max_beam"),
    "alpha": (0, 10),
    "max_len_a": (0, 4),
    "max_len_b": (0, 1024),
    "min_len": (0, 1024),
    "no_repeat_ngram": (0, 64),
    "seed": (0, 2**63 - 1),
}


def test_server_bounds_are_declared_on_the_fields() -> None:
    settings = ServeSettings(max_beam=7)
    declared = {}
    for f in api_fields():
        limits = server_limits(f, settings)
        if limits is not None:
            declared[f.name] = (limits.ge, limits.le)
    expected = {k: (lo, 7 if hi == "max_beam" else hi) for k, (lo, hi) in SERVER_BOUNDS.items()}
    assert declared == expected
    # Nothing is left of a second list of bounds in the server's code.
    assert not [name for name in vars(schemas) if name.endswith("_MAX")]


@pytest.mark.parametrize("name", sorted(SERVER_BOUNDS))
def test_server_accepts_its_bounds_and_refuses_beyond(name: str) -> None:
    settings = ServeSettings(max_beam=5)
    limits = server_limits(FIELDS[name], settings)
    assert limits is not None
    kind = float if HINTS[name] is float else int

    def check(value: float) -> tuple[DecodeOptions | None, list[tuple[str, str]]]:
        params = DecodeParams(method="sample", **{name: kind(value)})  # nbest > beam allowed
        return schemas.decode_options(params, settings)

    for value in (limits.ge, limits.le):
        options, problems = check(value)
        assert options is not None and getattr(options, name) == value, problems
    for value in (limits.ge - 1, limits.le + 1):
        options, problems = check(value)
        assert options is None
        assert [field for field, _ in problems] == [name], problems
    assert "must be in [" in problems[0][1]


def test_server_reports_every_bad_field_at_once() -> None:
    params = DecodeParams(beam=0, alpha=11.0, max_len_b=5000, top_p=0.0)
    options, problems = schemas.decode_options(params, ServeSettings())
    assert options is None
    assert sorted(field for field, _ in problems) == ["alpha", "beam", "max_len_b", "top_p"]


def test_descriptions_state_the_bounds_the_server_applies() -> None:
    fields = DecodeParams.model_fields
    assert fields["alpha"].description == "Length penalty exponent, 0 to 10 (the paper: 0.6)."
    assert fields["beam"].description == "Beam size, 1 to the server's max_beam (16 by default)."
    assert fields["top_p"].description.endswith("in (0, 1].")
    assert str(2**63 - 1) in fields["seed"].description


# -------------------------------------------------------------------------------- validation

INVALID = [
    ("method", "viterbi"),
    ("beam", 0),
    ("beam", 2.0),
    ("alpha", "high"),
    ("length_penalty", "fancy"),
    ("nbest", 0),
    ("max_len_a", -0.5),
    ("max_len_b", -1),
    ("min_len", -1),
    ("no_repeat_ngram", -1),
    ("temperature", 0.0),
    ("top_k", -1),
    ("top_p", 0.0),
    ("top_p", 1.5),
    ("seed", "7"),
    ("max_tokens", 0),
    ("max_sentences", 0),
    ("use_cache", 1),
]


@pytest.mark.parametrize(("name", "value"), INVALID, ids=[f"{n}={v!r}" for n, v in INVALID])
def test_invalid_values_are_named(name: str, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        DecodeOptions(**{name: value})
    assert [p.split(":")[0] for p in caught.value.problems] == [name]


def test_every_field_is_covered_by_the_invalid_cases() -> None:
    assert {name for name, _ in INVALID} == set(FIELDS)


def test_all_problems_at_once_and_the_relation_between_beam_and_nbest() -> None:
    with pytest.raises(ConfigError) as caught:
        DecodeOptions(beam=0, top_p=2.0, method="oracle")
    assert sorted(p.split(":")[0] for p in caught.value.problems) == ["beam", "method", "top_p"]
    with pytest.raises(ConfigError, match=r"nbest: must be <= beam \(2\) for beam search"):
        DecodeOptions(beam=2, nbest=3)
    assert DecodeOptions(method="sample", beam=2, nbest=3).n_hypotheses == 3
    assert DecodeOptions(method="greedy", nbest=3).n_hypotheses == 1
    with pytest.raises(ConfigError, match="beam_size: unknown option"):
        DecodeOptions.from_kwargs({"beam_size": 4})


def test_length_penalty_names_the_function_it_uses() -> None:
    for name, function in LENGTH_PENALTIES.items():
        assert DecodeOptions(length_penalty=name).penalty is function


# ------------------------------------------------------------------- one field, three forms

Extended = dataclasses.make_dataclass(
    "Extended",
    [
        (
            "length_bonus",
            float,
            setting(
                0.25,
                ge=0,
                help="bonus per output token (default %(default)s)",
                server=Limits(le=2.0),
                doc="Bonus per output token, {ge} to {le}.",
            ),
        )
    ],
    bases=(DecodeOptions,),
    frozen=True,
)


def test_a_new_field_is_a_flag() -> None:
    assert parse([], Extended)["length_bonus"] == 0.25
    assert parse(["--length-bonus", "0.5"], Extended)["length_bonus"] == 0.5
    assert "bonus per output token (default 0.25)" in parser_for(Extended).format_help()
    assert "length_bonus" not in parse([])


def test_a_new_field_is_validated() -> None:
    assert Extended(length_bonus=0.5).length_bonus == 0.5
    with pytest.raises(ConfigError) as caught:
        Extended(length_bonus=-1.0, beam=0)
    assert sorted(p.split(":")[0] for p in caught.value.problems) == ["beam", "length_bonus"]


def test_a_new_field_is_a_request_field_with_its_server_bound() -> None:
    model = request_model(Extended, "ExtendedParams")
    field = model.model_fields["length_bonus"]
    assert field.default == 0.25
    assert field.description == "Bonus per output token, 0 to 2."
    with pytest.raises(pydantic.ValidationError):
        model(length_bonus="much")
    options, problems = schemas.decode_options(model(length_bonus=1.5), ServeSettings(), Extended)
    assert isinstance(options, Extended) and options.length_bonus == 1.5
    options, problems = schemas.decode_options(model(length_bonus=3.0), ServeSettings(), Extended)
    assert options is None
    assert problems == [("length_bonus", "must be in [0, 2], got 3.0")]
    assert "length_bonus" not in DecodeParams.model_fields
