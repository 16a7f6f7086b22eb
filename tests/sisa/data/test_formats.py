"""Record formats (sisa/data/formats.py): the canonical stored forms of chats and prompt-completion
pairs decode to what was encoded, and an Example never prints its content."""

from __future__ import annotations

from sisa.data import formats


def test_decode_round_trips_the_canonical_forms():
    chat = [{"role": "user", "content": "q é"}, {"role": "assistant", "content": 'a "quoted"\nline'}]
    item = formats.decode(formats.CHAT, formats.encode_chat(chat))
    assert item.messages == (("user", "q é"), ("assistant", 'a "quoted"\nline'))
    assert formats.decode(None, "plain") == "plain" and formats.decode("text", "plain") == "plain"
    pair = formats.decode(formats.PROMPT_COMPLETION, formats.encode_pair("p", " c"))
    assert (pair.prompt, pair.completion) == ("p", " c")
    assert "q é" not in repr(item) and " c" not in repr(pair)  # an Example never prints its content
