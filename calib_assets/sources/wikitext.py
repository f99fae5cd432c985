"""MediaWiki XML export -> plain prose: a regex/scanner stripper, no wiki parser dependency.

It aims at readable paragraphs for language-model calibration, not at a faithful rendering: templates,
tables, references, files and categories are dropped; links and formatting keep their visible text.
"""

from __future__ import annotations

import bz2
import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

MAIN_NAMESPACE = "0"

# Sections that hold lists of links and citations rather than prose.
_BOILERPLATE_SECTIONS = {
    "see also", "references", "notes", "footnotes", "citations", "sources", "bibliography",
    "further reading", "external links", "notes and references", "references and notes",
}
# Link prefixes whose target is not shown as text in an article (media, categories, other languages).
_HIDDEN_LINK = re.compile(r"^\s*(?:(?i:file|image|media|category)\s*|[a-z]{2,3}(?:-[a-z]+)*):")
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_SELF_CLOSING_REF = re.compile(r"<ref\b[^>]*/>", re.IGNORECASE)
# Tags whose content is not prose: citations, formulas, galleries, code, etc.
_DROPPED_ELEMENTS = re.compile(
    r"<(ref|math|chem|gallery|timeline|score|syntaxhighlight|source|pre|imagemap|graph|mapframe)\b[^>]*>"
    r".*?(?:</\1\s*>|\Z)",
    re.IGNORECASE | re.DOTALL,
)
_ANY_TAG = re.compile(r"</?[a-zA-Z][^<>]*?/?>")
# A link holding no other link; single brackets may appear inside (file captions: "Bicyclo[1.1.0]butane").
_INNERMOST_LINK = re.compile(r"\[\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\]")
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]+\s*([^\]]*)\]", re.IGNORECASE)
_BOLD_ITALIC = re.compile(r"'{2,}")
_HEADING = re.compile(r"^(={1,6})\s*(.*?)\s*\1\s*$")
_LIST_MARKER = re.compile(r"^[*#:;]+\s*")
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_HORIZONTAL_RULE = re.compile(r"^-{4,}\s*$", re.MULTILINE)
_EMPTY_BRACKETS = re.compile(r"\(\s*[,;:]*\s*\)")
_SPACE_BEFORE_PUNCT = re.compile(r" +([,.;:!?)])")
_SPACE_AFTER_OPEN = re.compile(r"\( +")


def iter_wiki_articles(path: Path) -> Iterator[tuple[str, str]]:
    """(title, wikitext) of each main-namespace, non-redirect page of a (.bz2) MediaWiki XML export."""
    opener = bz2.open if str(path).endswith(".bz2") else open
    with opener(path, "rb") as handle:
        for _, element in ET.iterparse(handle, events=("end",)):
            if _local_name(element.tag) != "page":
                continue
            article = _article_of(element)
            element.clear()
            if article is not None:
                yield article


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _article_of(page: ET.Element) -> tuple[str, str] | None:
    fields = {_local_name(child.tag): child for child in page.iter()}
    namespace = fields.get("ns")
    if namespace is None or (namespace.text or "").strip() != MAIN_NAMESPACE or "redirect" in fields:
        return None
    text = (fields["text"].text or "") if "text" in fields else ""
    if text.lstrip().lower().startswith("#redirect"):
        return None
    return (fields["title"].text or "").strip(), text


def strip_wiki_markup(wikitext: str) -> str:
    """Visible prose of a wikitext page (see the module docstring for what is kept)."""
    text = _COMMENT.sub("", wikitext)
    text = _SELF_CLOSING_REF.sub("", text)
    text = _DROPPED_ELEMENTS.sub("", text)
    text = remove_nested(text, "{{", "}}")
    text = _remove_tables(text)
    text = _replace_links(text)
    text = _EXTERNAL_LINK.sub(r"\1", text)
    text = _ANY_TAG.sub("", text)
    text = _MAGIC_WORD.sub("", text)
    text = _BOLD_ITALIC.sub("", text)
    text = _HORIZONTAL_RULE.sub("", text)
    text = "\n".join(_plain_lines(text.split("\n")))
    return _tidy_punctuation(html.unescape(text)).strip()


def remove_nested(text: str, opener: str, closer: str) -> str:
    """Drop every (possibly nested) `opener ... closer` span; an unclosed span runs to the end."""
    pieces: list[str] = []
    depth = 0
    position = 0
    token = re.compile(re.escape(opener) + "|" + re.escape(closer))
    for match in token.finditer(text):
        if match.group() == opener:
            if depth == 0:
                pieces.append(text[position : match.start()])
            depth += 1
        elif depth > 0:
            depth -= 1
            if depth == 0:
                position = match.end()
        else:  # a stray closer outside any span
            pieces.append(text[position : match.start()])
            position = match.end()
    if depth == 0:
        pieces.append(text[position:])
    return "".join(pieces)


def _remove_tables(text: str) -> str:
    """Drop `{| ... |}` tables (they open and close at the start of a line and may nest)."""
    kept: list[str] = []
    depth = 0
    for line in text.split("\n"):
        stripped = line.lstrip()
        if stripped.startswith("{|"):
            depth += 1
        elif depth > 0 and stripped.startswith("|}"):
            depth -= 1
        elif depth == 0:
            kept.append(line)
    return "\n".join(kept)


def _replace_links(text: str) -> str:
    """Resolve [[...]] from the innermost out, so captions holding links inside file links also go."""
    while True:
        replaced = _INNERMOST_LINK.sub(_link_text, text)
        if replaced == text:
            return replaced
        text = replaced


def _link_text(match: re.Match[str]) -> str:
    inner = match.group(1)
    if _HIDDEN_LINK.match(inner):
        return ""
    target, _, label = inner.partition("|")
    shown = label if label.strip() else target
    return shown.lstrip(":").strip()


def _plain_lines(lines: list[str]) -> Iterator[str]:
    """Headings become plain lines, list markers go, boilerplate sections (References ...) are dropped."""
    skipping_level = 0
    for line in lines:
        heading = _HEADING.match(line)
        if heading:
            level, title = len(heading.group(1)), heading.group(2).strip()
            if skipping_level and level > skipping_level:
                continue
            skipping_level = level if title.lower() in _BOILERPLATE_SECTIONS else 0
            if not skipping_level and title:
                yield ""
                yield title
            continue
        if not skipping_level:
            yield _LIST_MARKER.sub("", line)


def _tidy_punctuation(text: str) -> str:
    """Clean up what removed templates leave behind, e.g. 'Paris ( ; born 1900)' or 'word ,'."""
    text = _EMPTY_BRACKETS.sub("", text)
    text = re.sub(r"[^\S\n]+", " ", text)
    text = _SPACE_AFTER_OPEN.sub("(", text)
    text = re.sub(r"\(\s*[,;]\s*", "(", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text)
