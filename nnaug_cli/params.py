"""Click parameter types shared by the commands: bad values are refused before anything runs."""
from __future__ import annotations

import click


class NumberList(click.ParamType):
    """Comma-separated numbers of one kind (int or float), each finite and >= ``minimum``."""

    name = "LIST"

    def __init__(self, kind=int, minimum: float = 1, example: str = "64,128,256"):
        self.kind, self.minimum, self.example = kind, minimum, example

    def convert(self, value, param, ctx):
        if not isinstance(value, str):  # already converted (defaults, repeated conversion)
            return value
        numbers = []
        for part in (p.strip() for p in value.split(",")):
            try:
                number = self.kind(part)
            except ValueError:
                what = "whole number" if self.kind is int else "number"
                self.fail(f"{part!r} is not a {what} (give comma-separated {what}s, e.g. {self.example})", param, ctx)
            if not number >= self.minimum or number == float("inf"):
                self.fail(f"{part} is below {self.minimum:g} or not finite (e.g. {self.example})", param, ctx)
            numbers.append(number)
        return tuple(numbers) if self.kind is int else numbers


def IntList(minimum: int = 1, example: str = "64,128,256") -> NumberList:
    return NumberList(int, minimum, example)


def FloatList(minimum: float = 0.0) -> NumberList:
    return NumberList(float, minimum, "1,2.5,5")


class FoldList(click.ParamType):
    """Comma-separated nnU-Net folds, e.g. ``0,1,2`` or ``all``."""

    name = "FOLDS"

    def convert(self, value, param, ctx):
        from nnaug.errors import NnaugError
        from nnaug.experiment.plan import parse_folds

        if isinstance(value, list):
            return value
        try:
            return parse_folds(value)
        except NnaugError as exc:
            self.fail(str(exc).removeprefix("--folds "), param, ctx)


class Shard(click.ParamType):
    """``i/n`` with 0 <= i < n."""

    name = "I/N"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            index, count = (int(v) for v in str(value).split("/"))
        except ValueError:
            self.fail(f"{value!r}: use the form i/n, e.g. 0/4", param, ctx)
        if count < 1 or not 0 <= index < count:
            self.fail(f"{value!r}: need 0 <= i < n, e.g. 0/4 ... 3/4", param, ctx)
        return index, count


class GeneratorModel(click.ParamType):
    """A generator model in nnaug's registry (read when the command runs, so registered plug-ins count)."""

    name = "model"

    def get_metavar(self, param, ctx=None):
        from nnaug.generators import generator_names

        return "[" + "|".join(generator_names()) + "]"

    def convert(self, value, param, ctx):
        from nnaug.generators import generator_names

        if value not in generator_names():
            self.fail(f"'{value}' is not a generator nnaug knows: choose one of {', '.join(generator_names())}", param, ctx)
        return value


DATASET_ID = click.IntRange(1, 999)
POSITIVE = click.IntRange(min=1)
POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)
CONSISTENCY = click.FloatRange(0, 1, min_open=True)  # a Dice threshold: 0 < D <= 1
