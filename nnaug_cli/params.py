"""Click parameter types shared by the commands: bad values are refused before anything runs."""
from __future__ import annotations

import click


class IntList(click.ParamType):
    """Comma-separated integers >= ``minimum``, e.g. ``64,128,256``."""

    name = "LIST"

    def __init__(self, minimum: int = 1, example: str = "64,128,256"):
        self.minimum, self.example = minimum, example

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        numbers = []
        for part in (p.strip() for p in str(value).split(",")):
            try:
                number = int(part)
            except ValueError:
                self.fail(f"{part!r} is not a whole number (give comma-separated integers, e.g. {self.example})", param, ctx)
            if number < self.minimum:
                self.fail(f"{number} is below {self.minimum} (e.g. {self.example})", param, ctx)
            numbers.append(number)
        return tuple(numbers)


class FloatList(click.ParamType):
    """Comma-separated finite numbers >= ``minimum``, e.g. ``1,2.5,5``."""

    name = "LIST"

    def __init__(self, minimum: float = 0.0):
        self.minimum = minimum

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        numbers = []
        for part in (p.strip() for p in str(value).split(",")):
            try:
                number = float(part)
            except ValueError:
                self.fail(f"{part!r} is not a number (give comma-separated numbers, e.g. 1,2.5,5)", param, ctx)
            if not number >= self.minimum or number == float("inf"):
                self.fail(f"{part} is not a ratio >= {self.minimum:g}", param, ctx)
            numbers.append(number)
        return numbers


class FoldList(click.ParamType):
    """Comma-separated nnU-Net folds, e.g. ``0,1,2`` or ``all``."""

    name = "FOLDS"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        folds = []
        for part in (p.strip() for p in str(value).split(",")):
            if part == "all":
                folds.append("all")
            elif part.isdigit() and int(part) < 5:
                folds.append(int(part))
            else:
                self.fail(f"{part!r} is not a fold (0-4, or all with --test)", param, ctx)
        return folds


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


DATASET_ID = click.IntRange(1, 999)
POSITIVE = click.IntRange(min=1)
POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)
