"""The text of a cross-post: the photo's caption and its link, fitted to each network.

X counts a post's length the way its twitter-text library (v3 configuration) does: after NFC
normalisation, each code point in 0-4351 (Latin, Greek, Cyrillic, Hebrew, Arabic, Indic, ...),
8192-8205, 8208-8223 and 8242-8247 (spaces, dashes, quotes, primes) weighs 1, every other (CJK,
emoji, the ellipsis) weighs 2, and a URL weighs 23 whatever its length; at most 280 in all.
:func:`tweet_text` keeps ``caption + " " + link`` within that, trimming the caption on a
grapheme boundary (never inside an emoji sequence, a flag or a letter with its accents) and
ending it with "…".

Where this errs, it errs long, so a post never goes over: X counts a whole emoji sequence
(a family joined by ZWJs, a flag) as 2 where this counts each code point, and finding URLs in a
caption as twitter-text does needs its list of top-level domains, so here every place a URL could
start (a ``://``, or a dot between a letter or digit and two letters: ``example.com``,
``beach.Great``) adds 23 on top of the characters' own weight. Both only trim a caption near the
limit a little earlier than X would.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

from config.settings import Settings

MAX_WEIGHT = 280  # X's limit, in weighted characters
URL_WEIGHT = 23  # every URL, shortened to t.co, whatever it was
ELLIPSIS = "…"
# twitter-text v3: code points in these ranges weigh 1, all others 2
LIGHT_RANGES = ((0, 4351), (8192, 8205), (8208, 8223), (8242, 8247))
# Where a URL may begin (see the module docstring): counted as a URL each, on top
_URL_START = re.compile(r"://|(?<=[^\W_]|-)\.(?=[^\W\d_]{2})")

ZWJ = 0x200D


def link_for(photo_id: int, s: Settings) -> str:
    """The photo's public page, as cross-posts link it."""
    return s.photo_link.format(photo_id=photo_id)


def names_link(text: str, link: str) -> bool:
    """Whether ``text`` holds ``link`` itself, not a longer one (``/p/12`` is not ``/p/123``)."""
    return re.search(re.escape(link) + r"(?![\w/])", text) is not None


def char_weight(ch: str) -> int:
    cp = ord(ch)
    return 1 if any(lo <= cp <= hi for lo, hi in LIGHT_RANGES) else 2


def weighted_length(text: str) -> int:
    """The text's length as X counts it (or a little more: see the module docstring)."""
    text = unicodedata.normalize("NFC", text)
    return sum(map(char_weight, text)) + URL_WEIGHT * len(_URL_START.findall(text))


def tweet_text(caption: str, link: str, limit: int = MAX_WEIGHT) -> str:
    """``caption link``, the caption trimmed (grapheme-safe, ending in "…") so the whole fits
    ``limit`` weighted characters; the link alone when the caption is empty or nothing of it
    fits."""
    caption = unicodedata.normalize("NFC", caption).strip()
    room = limit - URL_WEIGHT - 1  # the link, and the space before it
    if not caption:
        return link
    if weighted_length(caption) <= room:
        return f"{caption} {link}"
    clusters = list(graphemes(caption))

    def trimmed(n: int) -> str:
        kept = "".join(clusters[:n]).rstrip()
        return kept + ELLIPSIS if kept else ""

    # The weight of a prefix never falls as it grows: the longest that fits, by bisection.
    lo, hi = 0, len(clusters)  # trimmed(lo) fits (the empty text does), trimmed(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if weighted_length(trimmed(mid)) <= room:
            lo = mid
        else:
            hi = mid
    text = trimmed(lo)
    return f"{text} {link}" if text else link


def facebook_message(caption: str, link: str) -> str:
    """A Page photo's message: the caption (Facebook allows far more than our 2,200 characters),
    a blank line, the link."""
    caption = caption.strip()
    return f"{caption}\n\n{link}" if caption else link


# Grapheme clusters: the user-perceived characters of UAX #29, the rules that matter for
# trimming text (Python's standard library has no segmenter). Close to the standard's extended
# clusters: CR LF, Hangul syllable sequences, combining marks and other extenders, spacing
# marks, emoji modifiers, tag sequences, ZWJ sequences, regional-indicator pairs.

def _is_extend(cp: int, cat: str) -> bool:
    return (cat in ("Mn", "Me") or cp == 0x200C  # ZWNJ
            or 0x1F3FB <= cp <= 0x1F3FF  # emoji skin-tone modifiers
            or 0xE0020 <= cp <= 0xE007F  # emoji tag sequences (subdivision flags)
            or 0xFF9E <= cp <= 0xFF9F)  # halfwidth katakana sound marks


def _is_pictographic(cp: int, cat: str) -> bool:
    return cat == "So" or 0x1F000 <= cp <= 0x1FAFF or 0x2600 <= cp <= 0x27BF


def _is_regional(cp: int) -> bool:
    return 0x1F1E6 <= cp <= 0x1F1FF


def _hangul(cp: int) -> str:
    if 0x1100 <= cp <= 0x115F or 0xA960 <= cp <= 0xA97C:
        return "L"
    if 0x1160 <= cp <= 0x11A7 or 0xD7B0 <= cp <= 0xD7C6:
        return "V"
    if 0x11A8 <= cp <= 0x11FF or 0xD7CB <= cp <= 0xD7FB:
        return "T"
    if 0xAC00 <= cp <= 0xD7A3:
        return "LV" if (cp - 0xAC00) % 28 == 0 else "LVT"
    return ""


_HANGUL_JOINS = {("L", "L"), ("L", "V"), ("L", "LV"), ("L", "LVT"), ("LV", "V"), ("LV", "T"),
                 ("V", "V"), ("V", "T"), ("LVT", "T"), ("T", "T")}


def _joins(prev: str, ch: str, cluster: str) -> bool:
    """Whether ``ch`` continues the cluster that ends in ``prev``."""
    p, c = ord(prev), ord(ch)
    pcat, ccat = unicodedata.category(prev), unicodedata.category(ch)
    if prev == "\r" and ch == "\n":
        return True
    if pcat in ("Cc", "Zl", "Zp") or ccat in ("Cc", "Zl", "Zp"):
        return False
    if (_hangul(p), _hangul(c)) in _HANGUL_JOINS:
        return True
    if _is_extend(c, ccat) or c == ZWJ or ccat == "Mc":
        return True
    if p == ZWJ and _is_pictographic(c, ccat):
        return len(cluster) > 1 and _is_pictographic(ord(cluster[0]), unicodedata.category(
            cluster[0]))
    if _is_regional(p) and _is_regional(c):
        # pairs: join only if the cluster so far holds an odd number of indicators
        return sum(_is_regional(ord(x)) for x in cluster) % 2 == 1
    return False


def graphemes(text: str) -> Iterator[str]:
    """The text cut into grapheme clusters."""
    cluster = ""
    for ch in text:
        if cluster and not _joins(cluster[-1], ch, cluster):
            yield cluster
            cluster = ""
        cluster += ch
    if cluster:
        yield cluster
