"""One command line for every stage, built from the stage's config dataclass.

A stage declares a :class:`Stage`: its config dataclass, the directory it writes (locked while it
runs, so no writer can forget the lock) and the few flag aliases users already type. ``parse``
builds the argparse parser and the full ``--help`` from the dataclass: every key (nested sections
as dotted keys), its type, its default and the field's ``# comment``. Adding an option to a stage
is adding a field to its dataclass (and using it); no parser is written by hand.

Precedence: dataclass defaults < ``Stage.defaults`` < ``--config FILE.yaml`` < ``--key VALUE`` and
``key.sub=value``; a key given twice with different values on the command line is refused.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import json
import re
import sys
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from toremi.config import ConfigError, load_config, to_dict

MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Key:
    """One config key as the command line shows it."""

    name: str            # dotted: ``optim.lr``
    type: Any            # the annotation (Optional[...] kept)
    default: Any         # MISSING for a required key
    doc: str             # the field's comment
    option: bool = True  # False: documented only (fields of list items, ``methods[].name``)


@dataclass(frozen=True, eq=False)  # hashed by identity: its parser is cached
class Stage:
    """A stage's command line: ``toremi <name>`` over ``config``, writing ``lock(cfg)``."""

    name: str                                  # "prepare", "corpus build"
    config: type                               # the config dataclass
    lock: Callable[[Any], Any]                 # cfg -> output dir held while the stage runs; None: writes nothing
    doc: str = ""                              # the module docstring (shown above the options)
    aliases: dict = field(default_factory=dict)     # "--tokens": "tokens_dir"; "--resume": "resume=must" (a switch)
    shorthands: dict = field(default_factory=dict)  # key=value renames: method=x -> method.name=x
    defaults: dict | None = None               # values under the YAML file (the demo's grid)
    config_replaces_defaults: bool = False     # --config FILE is used instead of ``defaults``
    config_required: bool = False
    leading: str | None = None                 # a Literal key given as a bare first word (annotate's step)
    sections: Callable[[], dict] | None = None  # extra nested sections: {"method.toremi": ToReMiOptions}
    hidden: tuple = ()                         # keys not shown (filled by a section, e.g. method.opts)
    refuse: tuple = ()                         # exceptions meaning bad input: one stderr line, exit 2

    def keys(self) -> list[Key]:
        out = [k for k in schema(self.config) if k.name not in self.hidden]
        for prefix, cls in (self.sections() if self.sections else {}).items():
            out += schema(cls, prefix + ".")
        return out

    def parser(self) -> argparse.ArgumentParser:
        return build_parser(self)

    def parse(self, argv: list[str] | None) -> Any:
        """The validated config from ``argv`` (argparse exits 2 on a malformed command line)."""
        argv = list(argv or [])
        lead = []
        if self.leading and argv and argv[0] in literal_choices(_hint(self.config, self.leading)):
            lead = [f"{self.leading}={argv.pop(0)}"]
        args = self.parser().parse_intermixed_args(argv)
        overrides = command_line_overrides(self, args, lead)
        defaults = None if (self.config_replaces_defaults and args.config) else self.defaults
        return load_config(self.config, args.config, overrides, defaults=defaults)

    def run(self, argv: list[str] | None, body: Callable[[Any], int | None]) -> int:
        """Parse, hold the output dir's lock, run ``body(cfg)``; its return value is the exit code."""
        from toremi.integrity import DirLock

        cfg = self.parse(argv)
        where = self.lock(cfg)
        if where is None:
            return self._call(body, cfg)
        where = Path(where)
        fresh, ok = not where.exists(), False
        with DirLock(where, self.name):
            try:
                rc = self._call(body, cfg)
                ok = rc == 0
                return rc
            finally:
                if fresh and not ok:  # a refused stage leaves no output dir behind (only its lock)
                    _remove_if_only_lock(where)

    def _call(self, body: Callable[[Any], int | None], cfg) -> int:
        try:
            return int(body(cfg) or 0)
        except self.refuse as exc:
            print(f"toremi {self.name}: {exc}", file=sys.stderr)
            return 2


def _remove_if_only_lock(directory: Path) -> None:
    from toremi.integrity import LOCK_NAME

    try:
        if [p.name for p in directory.iterdir()] == [LOCK_NAME]:
            (directory / LOCK_NAME).unlink()  # still held: a newcomer locks a new file
            directory.rmdir()
    except OSError:  # someone else is writing there now: leave it
        pass


# --- the keys of a dataclass -----------------------------------------------------------------------
def _hint(cls: type, name: str) -> Any:
    return _hints(cls).get(name, Any)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), len(args) < len(typing.get_args(tp))
    return tp, False


def literal_choices(tp: Any) -> tuple:
    tp, _ = _strip_optional(tp)
    return typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else ()


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass a field holds (``X``, ``X | None``, ``X | str``), else None."""
    tp, _ = _strip_optional(tp)
    cands = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return next((c for c in cands if dataclasses.is_dataclass(c)), None)


def _list_item(tp: Any) -> Any:
    tp, _ = _strip_optional(tp)
    return typing.get_args(tp)[0] if typing.get_origin(tp) in (list, tuple) and typing.get_args(tp) else None


@functools.lru_cache(maxsize=None)
def schema(cls: type, prefix: str = "") -> list[Key]:
    """Every key of ``cls``: scalars as they are, nested dataclasses as ``section.key`` (a field that
    is ``Section | str`` is both), fields of list items as ``key[].sub`` (documented only)."""
    docs = field_docs(cls)
    out: list[Key] = []
    for f in dataclasses.fields(cls):
        tp = _hint(cls, f.name)
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else MISSING)
        nested = _dataclass_in(tp)
        if nested is None or _strip_optional(tp)[0] is not nested:  # a value (or `Section | str`)
            out.append(Key(prefix + f.name, tp, default, docs.get(f.name, "")))
        if nested is not None:
            out += schema(nested, f"{prefix}{f.name}.")
        item = _list_item(tp)
        if item is not None and dataclasses.is_dataclass(item):
            out += [dataclasses.replace(k, option=False) for k in schema(item, f"{prefix}{f.name}[].")]
    return out


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """``{field: comment}`` from the class source: the comment lines right above a field and its
    trailing ``# comment`` (base classes first, so a subclass's comment wins)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        for other in klass.__dict__.get("__doc_from__", ()):  # a class made from another's fields
            out.update(field_docs(other))
        try:
            src = textwrap.dedent(inspect.getsource(klass))
            tree = ast.parse(src)
        except (OSError, TypeError, SyntaxError):
            continue
        comments = {t.start[0]: t.string.lstrip("#").strip()
                    for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type == tokenize.COMMENT}
        lines = src.splitlines()
        node = next(n for n in tree.body if isinstance(n, ast.ClassDef))
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            above, ln = [], stmt.lineno - 1
            while ln >= 1 and lines[ln - 1].strip().startswith("#"):
                above.insert(0, comments[ln])
                ln -= 1
            trailing = comments.get(stmt.end_lineno) or comments.get(stmt.lineno)
            text = " ".join(above + ([trailing] if trailing else []))
            if text:
                out[stmt.target.id] = text
    return out


def type_name(tp: Any) -> str:
    """``int``, ``float|None``, ``{cosine,linear}``, ``list[str]``, ``path`` for the help."""
    if tp is Any:
        return "any"
    choices = literal_choices(tp)
    inner, optional = _strip_optional(tp)
    if choices:
        name = "{" + ",".join(map(str, choices)) + "}"
    elif typing.get_origin(inner) in (typing.Union, types.UnionType):
        name = "|".join(type_name(a) for a in typing.get_args(inner))
    elif typing.get_origin(inner) in (list, tuple):
        name = f"list[{type_name(_list_item(inner) or Any)}]"
    elif typing.get_origin(inner) is dict or inner is dict:
        name = "mapping"
    elif inner is Path:
        name = "path"
    else:
        name = getattr(inner, "__name__", str(inner))
    return name + ("|None" if optional else "")


def _show(value: Any) -> str:
    if value is MISSING:
        return "required"
    if value == "":
        return '""'
    value = to_dict(value)
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


# --- the parser -----------------------------------------------------------------------------------
def flag_of(key: str) -> str:
    return "--" + key.replace("_", "-")


def _is_switch(tp: Any) -> bool:
    return _strip_optional(tp)[0] is bool


def _is_scalar_list(tp: Any) -> bool:
    item = _list_item(tp)
    return item is not None and not dataclasses.is_dataclass(item) and typing.get_origin(item) is None


@functools.lru_cache(maxsize=None)
def build_parser(stage: Stage) -> argparse.ArgumentParser:
    """argparse from the dataclass: ``--config``, the aliases, one option per key, grouped by
    section, each with its type, default and comment; ``key.sub=value`` items positional."""
    keys = stage.keys()
    by_name = {k.name: k for k in keys}
    p = argparse.ArgumentParser(
        prog=f"toremi {stage.name}", description=stage.doc, allow_abbrev=False,
        formatter_class=_Formatter,
        usage=f"toremi {stage.name}" + (f" [{'|'.join(literal_choices(_hint(stage.config, stage.leading)))}]"
                                         if stage.leading else "")
        + f" {'--config FILE.yaml' if stage.config_required else '[--config FILE.yaml]'} [--KEY VALUE ...] "
          "[key.sub=value ...]",
        epilog="Every --KEY VALUE can also be written KEY=VALUE (nested: --optim.lr 3e-4 = optim.lr=3e-4);\n"
               "a list takes several values, a,b or [a,b]; a switch --x / --no-x is x=true / x=false.")
    p.add_argument("--config", metavar="FILE.yaml", required=stage.config_required,
                   help=f"YAML file with {stage.config.__name__} keys (nested sections as mappings); "
                        "the options below override it")
    if stage.aliases:
        g = p.add_argument_group("short forms")
        for flag, target in stage.aliases.items():
            key, eq, const = target.partition("=")
            doc = (by_name[key].doc if key in by_name else "").replace("%", "%%")
            if eq:
                g.add_argument(flag, dest="alias " + flag, action="store_const", const=const,
                               help=f"= {target}. {doc}".strip())
            else:
                g.add_argument(flag, dest="alias " + flag, metavar=_metavar(by_name[key].type),
                               help=f"= {key}=VALUE. {doc}".strip())
    groups: dict[str, Any] = {"": p.add_argument_group(f"options ({stage.config.__name__})")}
    value_only: list[str] = []
    items: list[str] = []
    for k in keys:
        section = k.name.rpartition(".")[0]
        default = _lookup(stage.defaults, k.name, k.default)
        help_ = f"[{type_name(k.type)}, default {_show(default)}]" + (f" {k.doc}" if k.doc else "")
        flag = flag_of(k.name)
        if not k.option:  # a field of a list's items: set with the whole list
            items.append(f"  {k.name}\n      {help_}")
            continue
        if flag in stage.aliases:  # its --flag is an alias of another key: key=value only
            value_only.append(f"  {k.name}=VALUE\n      {help_}")
            continue
        help_ = help_.replace("%", "%%")
        if section not in groups:
            groups[section] = p.add_argument_group(f"{section}.*")
        dest = "key " + k.name
        if _is_switch(k.type):
            groups[section].add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                                         help=help_)
        elif _is_scalar_list(k.type):
            groups[section].add_argument(flag, dest=dest, nargs="+", metavar="X", help=help_)
        else:
            groups[section].add_argument(flag, dest=dest, metavar=_metavar(k.type), help=help_)
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    if items:
        p.epilog = ("fields of list items (the whole list in --config, or key='[{a: 1}, ...]'):\n"
                    + "\n".join(items) + "\n\n" + p.epilog)
    if value_only:
        p.epilog = "keys set only as key=VALUE (or in --config):\n" + "\n".join(value_only) + "\n\n" + p.epilog
    return p


def _lookup(data: dict | None, dotted: str, fallback: Any) -> Any:
    """``data[a][b]`` for ``a.b`` (the stage's own defaults, shown in --help), else ``fallback``."""
    node: Any = data or {}
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return fallback
        node = node[part]
    return node


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """The docstring as written; option help in a wider column than argparse's default."""

    def __init__(self, prog: str):
        import shutil

        super().__init__(prog, max_help_position=34, width=min(max(shutil.get_terminal_size().columns, 100), 120))


def _metavar(tp: Any) -> str:
    if literal_choices(tp):
        return "X"
    names = type_name(tp).split("|")
    if "str" in names:  # `Section | str`: the short form (engine=ray)
        return "STR"
    return "YAML" if names[0].startswith(("list[", "mapping")) or names[0][:1].isupper() else names[0].upper()


def command_line_overrides(stage: Stage, args: argparse.Namespace, lead: list[str]) -> list[str]:
    """Options and ``key=value`` items -> override strings; a list option's trailing ``k=v`` items
    (argparse gives them to the list) go back to the overrides; a key given twice is refused."""
    positional = list(args.overrides or [])
    flags: list[tuple[str, str, str]] = []  # (key, value, how it was given)
    for dest, value in vars(args).items():
        kind, _, name = dest.partition(" ")
        if kind not in ("key", "alias") or value is None:
            continue
        flag = name if kind == "alias" else flag_of(name)
        key, eq, _ = (stage.aliases[name] if kind == "alias" else name).partition("=")
        if isinstance(value, list):
            while len(value) > 1 and re.fullmatch(r"[A-Za-z_][\w.]*=.*", value[-1]):
                positional.insert(0, value.pop())
            value = value[0] if len(value) == 1 else json.dumps(value)
        elif isinstance(value, bool):
            value = str(value).lower()
        flags.append((key, str(value), f"{flag} {value}" if not eq else flag))
    out, given = [], {}
    for key, value, how in flags:
        out.append(f"{key}={value}")
        given[key] = (value, how)
    for item in lead + positional:
        key, eq, value = item.partition("=")
        key = stage.shorthands.get(key.strip(), key.strip())
        if eq and key in given and given[key][0] != value:
            raise ConfigError(f"{key} is given twice, as {given[key][1]} and as {key}={value}; keep one")
        out.append(f"{key}{eq}{value}")
    return out


def help_text(stage: Stage) -> str:
    return build_parser(stage).format_help()
