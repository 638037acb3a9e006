"""UTF-8-safe streaming detokenization and stop strings, as properties (hypothesis)."""

from __future__ import annotations

from gptforge.sampling import StopStringMatcher, StreamingDetokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EMOJI = "😀🎉👍🏽👨‍👩‍👧❤️🚀🦀"
CJK = "你好世界今天天气很好东京北京大学中文字"
TURKISH = "çğıİöşüÇĞÖŞÜ ağır ışık İstanbul"
ALPHABET = st.sampled_from(list(EMOJI + CJK + TURKISH + "abc xyz.,!\n"))
TEXT = st.lists(ALPHABET, min_size=1, max_size=40).map("".join)
FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _stream(tokenizer, ids: list[int]) -> list[str]:
    d = StreamingDetokenizer(tokenizer)
    return [d.push(i) for i in ids] + [d.flush()]


@FAST
@given(text=TEXT)
def test_hyp_deltas_of_encoded_text_join_to_it_and_never_split_a_char(tokenizer, text):
    ids = tokenizer.encode(text)
    deltas = _stream(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids) == text
    # No delta carries a replacement char: a partial character is never emitted.
    assert all("\ufffd" not in d for d in deltas)


@FAST
@given(data=st.data())
def test_hyp_any_id_sequence_streams_to_the_full_decode(tokenizer, data):
    ids = data.draw(st.lists(st.integers(0, tokenizer.n_vocab - 1), max_size=30))
    assert "".join(_stream(tokenizer, ids)) == tokenizer.decode(ids)


def test_multi_token_emoji_waits_for_its_last_byte(tokenizer):
    ids = tokenizer.encode("🦀")  # rare: split into several byte tokens
    assert len(ids) > 1
    deltas = _stream(tokenizer, ids)
    assert deltas[:-2] == [""] * (len(ids) - 1) and deltas[-2] == "🦀"


@FAST
@given(
    pieces=st.lists(st.text(alphabet="ab\nUs:er", max_size=6), max_size=12),
    stops=st.lists(st.text(alphabet="ab\nUs:er", min_size=1, max_size=4), min_size=1, max_size=3),
)
def test_hyp_stop_matcher_output_is_text_cut_at_first_stop(pieces, stops):
    m = StopStringMatcher(stops)
    out = "".join(m.push(p) for p in pieces) + m.flush()
    # Oracle: the first push after which the text so far contains a stop; cut at the earliest
    # start among the stops it contains then.
    text = ""
    for p in pieces:
        text += p
        hits = [i for i in (text.find(s) for s in stops) if i >= 0]
        if hits:
            assert m.stopped and out == text[: min(hits)]
            return
    assert not m.stopped and out == text


def test_stop_string_spanning_pushes_is_held_back_then_dropped():
    m = StopStringMatcher(["###"])
    assert m.push("hello #") == "hello "
    assert m.push("#") == ""
    assert m.push("# tail") == ""
    assert m.stopped and m.matched == "###" and m.flush() == ""


def test_held_text_is_released_when_it_is_not_a_stop():
    m = StopStringMatcher(["###"])
    assert m.push("a##") == "a"
    assert m.push("b") == "##b"
