"""The text of a cross-post: X's weighted length (twitter-text v3) and grapheme-safe trimming."""

from __future__ import annotations

import unicodedata

import pytest

from tasks.social.captions import (
    ELLIPSIS,
    facebook_message,
    graphemes,
    names_link,
    tweet_text,
    weighted_length,
)

LINK = "https://photofarm.example/p/1893120473423561728"


def caption_weight(text: str) -> int:
    """What X counts for a tweet_text: the caption's weight, the space, the link (23)."""
    assert text.endswith(LINK)
    head = text[: -len(LINK)]
    return (weighted_length(head.removesuffix(" ")) + 1 if head else 0) + 23


@pytest.mark.parametrize(("text", "weight"), [
    ("", 0),
    ("hello world", 11),
    ("Ünïcödé ñ", 9),  # Latin-1 and Latin Extended: 1 each
    ("Привет", 6),  # Cyrillic: 1 each
    ("日本語", 6),  # CJK: 2 each
    ("한국어", 6),  # Hangul syllables: 2 each
    ("\u2013\u2014\u201c\u201d\u2018\u2019", 6),  # dashes and quotes (8208-8223): 1 each
    ("…", 2),  # the ellipsis is not in the light ranges
    ("😀", 2),
    ("👍🏽", 4),  # a code point each (X counts the sequence as 2: we err long)
    ("e\u0301", 1),  # NFC makes it é
])
def test_weights_follow_twitter_text_v3(text: str, weight: int) -> None:
    assert weighted_length(text) == weight


def test_a_possible_url_counts_23_on_top_of_its_characters() -> None:
    assert weighted_length("see example.com") == 15 + 23
    assert weighted_length("http://x") == 8 + 23
    assert weighted_length("e.g. 3.14 U.S.A") == 15  # no URL can start there


def test_short_captions_are_kept_whole() -> None:
    assert tweet_text("sunset", LINK) == f"sunset {LINK}"
    assert tweet_text("  sunset \n", LINK) == f"sunset {LINK}"
    assert tweet_text("", LINK) == LINK
    assert tweet_text("   ", LINK) == LINK
    exact = "a" * (280 - 24)  # caption + space + the link's 23: exactly 280
    assert tweet_text(exact, LINK) == f"{exact} {LINK}"


def test_a_long_latin_caption_is_trimmed_to_fit_with_an_ellipsis() -> None:
    text = tweet_text("a" * 300, LINK)
    assert text == "a" * 254 + ELLIPSIS + " " + LINK  # 254 + 2 (ellipsis) + 1 + 23 = 280
    assert caption_weight(text) == 280


def test_cjk_counts_double() -> None:
    text = tweet_text("日本語の写真" * 40, LINK)
    assert caption_weight(text) <= 280
    kept = text[: -len(LINK) - 1].removesuffix(ELLIPSIS)
    assert len(kept) == (280 - 24 - 2) // 2  # 127 characters of weight 2
    assert ("日本語の写真" * 40).startswith(kept)


def test_trimming_never_splits_a_grapheme() -> None:
    family = "👨\u200d👩\u200d👧\u200d👦"  # 7 code points, one grapheme
    for prefix_len in range(230, 260):
        caption = "a" * prefix_len + family * 10
        text = tweet_text(caption, LINK)
        kept = text[: -len(LINK) - 1].removesuffix(ELLIPSIS)
        assert caption_weight(text) <= 280
        rest = kept[prefix_len:]
        assert len(rest) % len(family) == 0 and rest == family * (len(rest) // len(family))


@pytest.mark.parametrize("unit", ["🇫🇷", "👍🏽", "é", "e\u0301\u0323", "각", "ᄀ\u1161\u11a8",
                                  "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"])
def test_clusters_are_kept_together(unit: str) -> None:
    unit_nfc = unicodedata.normalize("NFC", unit)
    assert list(graphemes(unit_nfc * 3)) == [unit_nfc] * 3
    for start in range(240, 256):
        text = tweet_text("x" * start + unit * 40, LINK)
        kept = text[: -len(LINK) - 1].removesuffix(ELLIPSIS)[start:]
        assert kept == unit_nfc * (len(kept) // len(unit_nfc))
        assert caption_weight(text) <= 280


def test_regional_indicators_pair_up() -> None:
    assert list(graphemes("🇫🇷🇩🇪🇮")) == ["🇫🇷", "🇩🇪", "🇮"]


def test_trailing_space_before_the_ellipsis_is_dropped() -> None:
    caption = "word " * 100
    text = tweet_text(caption, LINK)
    assert f" {ELLIPSIS}" not in text and text.count(ELLIPSIS) == 1
    assert caption_weight(text) <= 280


def test_a_caption_with_urls_is_counted_long_never_short() -> None:
    caption = "more at a.co " * 30  # X: 23 per URL; we: 23 on top of each "a.co"
    text = tweet_text(caption, LINK)
    head = text[: -len(LINK) - 1]
    urls = head.count("a.co")
    x_counts = weighted_length(head.replace("a.co", "")) + 23 * urls + 24
    assert x_counts <= 280


def test_facebook_message_and_link_matching() -> None:
    assert facebook_message("  hi ", LINK) == f"hi\n\n{LINK}"
    assert facebook_message("", LINK) == LINK
    assert names_link(f"hi\n\n{LINK}", LINK)
    assert names_link(f"{LINK} and more", LINK)
    assert not names_link(f"hi {LINK}0", LINK)  # another photo's link
    assert not names_link(f"hi {LINK}/x", LINK)
    assert not names_link("hi", LINK)
