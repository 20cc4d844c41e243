import pyarrow as pa
import pytest

from egoray.data.text import TagWords, normalise, normalise_one, word_counts


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("#C C opens a door. .", "The camera wearer opens a door"),
        ("#C C picks #unsure from the table", "The camera wearer picks something from the table"),
        ("#c c cuts onion", "The camera wearer cuts onion"),
        ("#C  C  lifts   the pan  .", "The camera wearer lifts the pan"),
        ("C opens a door to the garage with his right hand. .",
         "The camera wearer opens a door to the garage with his right hand"),
        ("#O man X gives C a bag", "Another person gives the camera wearer a bag"),
        ("#O The woman A talks to C.", "Another person talks to the camera wearer"),
        ("#O opens the door", "Another person opens the door"),
        ("O hands C a cup", "Another person hands the camera wearer a cup"),
        ("C, O and C talk", "The camera wearer, another person and the camera wearer talk"),
        ("take plate", "take plate"),
        ("#Summary C was cooking", "#Summary the camera wearer was cooking"),
    ],
)
def test_tags_become_words(raw, expected):
    assert normalise_one(raw) == expected


@pytest.mark.parametrize(
    "text",
    [
        "pick up Coca-Cola can",
        "open the OCR scanner",
        "tighten the C-clamp",
        "remove the O-ring",
        "read CONTROL panel",
        "#Cut fruit",
        "#Opening",
        "Carrot and Onion",
    ],
)
def test_letters_inside_words_are_never_deleted(text):
    out = normalise_one(text)
    # Every letter of the input survives, in order (only whitespace/dots may go).
    assert [c for c in out if c.isalpha()] == [c for c in text if c.isalpha()]


def test_configured_words_and_nulls():
    words = TagWords(camera_wearer="I", other="someone else", unsure="an object", bare_letters=False)
    out = normalise(pa.array(["#C C takes #unsure", "#O takes it", None, "C stays"]), words)
    assert out.to_pylist() == ["I takes an object", "Someone else takes it", None, "C stays"]


def test_replacement_with_backslash_is_literal():
    assert normalise_one("#C C waves", TagWords(camera_wearer="The wearer\\1")) == "The wearer\\1 waves"


def test_word_counts():
    counts = word_counts(pa.array(["a b  c", "", None, " one "]))
    assert counts.to_pylist() == [3, 0, 0, 1]


def test_distinct_path_matches_plain_path():
    from egoray.data.text import normalise_distinct

    texts = pa.array(["#C C walks", "#C C walks", None, "#O man X waves at C", "#C C walks", "take plate"] * 5)
    cleaned, counts = normalise_distinct(texts)
    assert cleaned.to_pylist() == normalise(texts).to_pylist()
    assert counts.to_pylist() == word_counts(normalise(texts)).to_pylist()
    chunked = pa.chunked_array([texts.slice(0, 7), texts.slice(7)])
    assert normalise_distinct(chunked)[0].to_pylist() == normalise(texts).to_pylist()
    unique = pa.array([f"#C C takes cup {i}" for i in range(10)])  # mostly distinct: the plain path
    assert normalise_distinct(unique)[0].to_pylist() == normalise(unique).to_pylist()
