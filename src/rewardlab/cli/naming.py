"""One naming across the CLI, and the old option names kept as deprecated aliases.

The names (docs/cli_naming.md has the before/after table):

- ``--model``: the model a command trains, samples or evaluates;
- ``--steps``: optimizer steps (RL steps for ``rl`` and ``demo``);
- ``--samples``: samples per problem;
- ``--num-problems`` / ``-n``: how many problems (or rows) to use.

An old name still works for one release: it is rewritten to the new one before parsing and a
warning goes to stderr. Commands take the aliases with ``cls=aliased(DEPRECATED[name])``.
"""

from __future__ import annotations

import typer
from typer.core import TyperCommand


DEPRECATED: dict[str, dict[str, str]] = {
    "sft": {"--max-steps": "--steps"},
    "train-rm": {"--base": "--model"},
    "score": {"--rm": "--model"},
    "eval-prm": {"--prm": "--model", "--limit": "--num-problems"},
    "eval": {"--limit": "--num-problems", "--k": "--samples"},
    "sample": {"--n": "--samples", "--limit": "--num-problems"},
    "label": {"--n": "--samples", "--limit": "--num-problems"},
    "bon": {"--policy": "--model", "--max-n": "--samples", "--limit": "--num-problems"},
    "data show": {"--n": "--num-problems"},
    "data testbed": {"--n": "--num-problems", "--min-steps": "--min-ops",
                     "--max-steps": "--max-ops"},
    "demo": {"--rl-steps": "--steps"},
    "po": {"--max-steps": "--steps"},
}
"""command → {old option: new option}; the old names go in the release after next."""


def rename_args(args: list[str], aliases: dict[str, str], command: str = "") -> list[str]:
    """``args`` with every deprecated option (``--old`` or ``--old=value``) renamed, warning once
    per name on stderr. Nothing after ``--`` is touched.

    >>> rename_args(["--n", "4", "--limit=2", "--", "--n"], {"--n": "--samples",
    ...             "--limit": "--num-problems"}, "sample")
    ['--samples', '4', '--num-problems=2', '--', '--n']
    """
    out: list[str] = []
    warned: set[str] = set()
    for i, tok in enumerate(args):
        if tok == "--":
            return out + args[i:]
        old = tok.split("=", 1)[0] if tok.startswith("--") else tok
        if old in aliases:
            new = aliases[old]
            if old not in warned:
                warned.add(old)
                where = f"{command}: " if command else ""
                typer.echo(f"warning: {where}{old} is deprecated, use {new} (the old name will be "
                           "removed in the next release)", err=True)
            tok = new + tok[len(old):]
        out.append(tok)
    return out


class AliasedCommand(TyperCommand):
    """A typer command that accepts the deprecated option names of :attr:`aliases`."""

    aliases: dict[str, str] = {}
    command: str = ""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, rename_args(list(args), self.aliases,
                                                   f"rewardlab {self.command}"))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.aliases:
            note = "Deprecated aliases (warn; removed in the next release): " + ", ".join(
                f"{old} → {new}" for old, new in self.aliases.items()) + "."
            self.epilog = f"{self.epilog}\n\n{note}" if self.epilog else note


def aliased(name: str) -> type[AliasedCommand]:
    """The command class for ``name`` (a key of :data:`DEPRECATED`)."""
    return type(f"Aliased_{name.replace(' ', '_').replace('-', '_')}", (AliasedCommand,),
                {"aliases": dict(DEPRECATED[name]), "command": name})
