"""Ready-made configs ("recipes") that ship inside the package: ``rlhf/configs/<stage>/<name>.yaml``.

They are package data, so a ``pip install`` user has them too, wherever the working folder is:

    rlhf recipes                          # list them, with the first line of each file's comment
    rlhf recipes --show sft/tiny          # print one (redirect it to a file to start your own)
    rlhf sft --recipe tiny key=value ...  # run a stage starting from one
    rlhf pipeline --recipe arithmetic     # pipelines live under pipeline/

A stage's folder is the stage name with ``-`` written ``_`` (``best-of-n`` -> ``best_of_n/``).
This module imports nothing heavy: listing recipes and printing help stay fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["ROOT", "RecipeNotFound", "recipe_path", "list_recipes", "describe", "main"]

ROOT = Path(__file__).resolve().parent


class RecipeNotFound(ValueError):
    """No shipped recipe has that name; the message lists the ones that exist."""


def _folder(stage: str) -> str:
    return stage.replace("-", "_")


def list_recipes(stage: str | None = None) -> dict[str, list[str]]:
    """``{stage folder: [recipe names]}``, sorted; only ``stage``'s folder when given."""
    out: dict[str, list[str]] = {}
    for d in sorted(p for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith("_")):
        if stage is not None and d.name != _folder(stage):
            continue
        names = sorted(f.stem for f in d.glob("*.yaml"))
        if names:
            out[d.name] = names
    return out


def recipe_path(stage: str, name: str) -> Path:
    """The shipped file for ``name`` (``tiny``, or ``sft/tiny`` naming the folder itself).
    ``--recipe`` takes names only: a name that leads outside the shipped configs (``../x``,
    ``/abs/path``) is refused; a file of your own is given as the config argument instead."""
    if name.startswith(("/", "~", ".")) or ".." in name.split("/") or name.count("/") > 1 or "\\" in name:
        raise RecipeNotFound(f"{name!r} is a path, and --recipe takes the name of a recipe shipped with rlhf "
                             f"(`rlhf recipes` lists them); to run your own file give it as the config: "
                             f"rlhf {stage} {name} [key=value ...]")
    if "/" in name:
        folder, name = name.split("/", 1)
    else:
        folder = _folder(stage)
    given = name
    name = name.removesuffix(".yaml")
    path = ROOT / folder / f"{name}.yaml"
    if not path.is_file():
        have = list_recipes(folder).get(folder, [])
        listing = ", ".join(have) if have else "none"
        own = (f"; {given} is a file here: give it as the config instead (rlhf {stage} {given})"
               if Path(given).is_file() else "")
        raise RecipeNotFound(f"no recipe {name!r} for {folder.replace('_', '-')} (shipped: {listing}); "
                             f"`rlhf recipes` lists them all{own}")
    return path


def describe(path: Path) -> str:
    """The first line of a recipe's leading comment: what it is for."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rlhf recipes", description="List or print the configs shipped with rlhf.")
    p.add_argument("--show", metavar="STAGE/NAME", help="print one recipe (e.g. sft/tiny); redirect it to a file "
                                                        "to start your own config")
    p.add_argument("stage", nargs="?", help="only this stage's recipes")
    a = p.parse_args(argv)
    if a.show:
        if "/" not in a.show:
            print(f"rlhf recipes: --show takes STAGE/NAME (e.g. sft/tiny), got {a.show!r}", file=sys.stderr)
            return 2
        try:
            path = recipe_path(a.show.split("/", 1)[0], a.show)
        except RecipeNotFound as e:
            print(f"rlhf recipes: {e}", file=sys.stderr)
            return 2
        sys.stdout.write(path.read_text())
        return 0
    found = list_recipes(a.stage)
    if not found:
        print(f"rlhf recipes: no recipes for {a.stage!r}", file=sys.stderr)
        return 2
    rows = [(f"{d}/{n}", describe(ROOT / d / f"{n}.yaml")) for d, names in found.items() for n in names]
    w = max(len(r[0]) for r in rows)
    print("Recipes shipped with rlhf (rlhf <stage> --recipe NAME; rlhf recipes --show STAGE/NAME prints one):\n")
    for key, text in rows:
        print(f"  {key:<{w}}  {text}")
    return 0
