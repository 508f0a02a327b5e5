"""Deterministic held-out splits: one folder of cases -> a training part and held-out parts.

``train=40,val=200,test=rest`` names the parts and their sizes (``rest`` takes what is left; at most
one part may say so). Cases are shuffled with a seeded NumPy generator over their *sorted* names, so
the same files and seed give the same split on any machine, whatever order the file system lists
them in. A split never repeats a case: the parts are disjoint and, with ``rest``, cover everything.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from nnaug.errors import NnaugError

REST = "rest"
_PART = re.compile(r"[A-Za-z][A-Za-z0-9]*")


@dataclass(frozen=True)
class SplitPart:
    name: str
    size: int | None  # None = the rest


def parse_split(text: str) -> list[SplitPart]:
    """``"train=40,val=200,test=rest"`` -> parts; bad syntax is an NnaugError that shows the right form."""
    example = "e.g. --split train=40,val=200,test=rest"
    parts: list[SplitPart] = []
    for item in (i.strip() for i in text.split(",")):
        name, sep, size = item.partition("=")
        if not sep or not _PART.fullmatch(name.strip()):
            raise NnaugError(f"--split part {item!r} is not NAME=SIZE with a name of ASCII letters and digits, starting with a letter ({example})")
        size = size.strip()
        if size == REST:
            parts.append(SplitPart(name.strip(), None))
        elif size.isdigit() and int(size) > 0:
            parts.append(SplitPart(name.strip(), int(size)))
        else:
            raise NnaugError(f"--split size {size!r} of part {name!r} is not a positive whole number or 'rest' ({example})")
    names = [p.name.lower() for p in parts]
    if len(parts) < 2:
        raise NnaugError(f"--split needs at least two parts, a training part and a held-out one ({example})")
    if len(set(names)) != len(names):
        raise NnaugError(f"--split names a part twice ({', '.join(p.name for p in parts)}): give each part its own name")
    if sum(p.size is None for p in parts) > 1:
        raise NnaugError(f"--split: only one part can take the rest ({example})")
    return parts


def assign_split(case_names: list[str], parts: list[SplitPart], seed: int) -> dict[str, list[str]]:
    """Part name -> its case names (each list sorted). Deterministic in (set of names, parts, seed)."""
    names = sorted(case_names)
    fixed = sum(p.size for p in parts if p.size is not None)
    has_rest = any(p.size is None for p in parts)
    if fixed > len(names) or (has_rest and fixed == len(names)):
        wanted = " + ".join(f"{p.name} {p.size if p.size is not None else REST}" for p in parts)
        raise NnaugError(f"--split asks for {wanted} cases but the folder has {len(names)}: make the parts smaller")
    order = np.random.default_rng(seed).permutation(len(names))
    result, start = {}, 0
    for part in parts:  # fixed sizes are taken in the order given; the rest part gets what is left at its place
        size = part.size if part.size is not None else len(names) - fixed
        result[part.name] = sorted(names[i] for i in order[start : start + size])
        start += size
    return result
