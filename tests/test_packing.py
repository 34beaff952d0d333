"""Packs of scoring requests and answers: what goes in comes out, and a cut pack is refused."""

from __future__ import annotations

import pytest

from modelhost import packing
from modelhost.errors import InvalidInput


def test_requests_and_answers_come_out_as_they_went_in():
    requests = [(b"application/json", b'{"inputs": [1]}'), (b"", b""), (b"text/csv", b"x\n1\n")]
    assert packing.unpack_requests(packing.pack_requests(requests)) == requests
    answers = [(200, 0, b'{"predictions": [1]}'), (503, 1, b'{"error_code": "X"}'), (400, 0, b"")]
    assert packing.unpack_answers(packing.pack_answers(answers)) == answers
    assert packing.unpack_requests(b"") == []


@pytest.mark.parametrize("cut", [1, 3, 5, 10])
def test_a_pack_cut_short_is_refused(cut):
    pack = packing.pack_requests([(b"application/json", b'{"inputs": [1, 2, 3]}')])
    with pytest.raises(InvalidInput, match="ends inside"):
        packing.unpack_requests(pack[:-cut])
    answers = packing.pack_answers([(200, 0, b'{"predictions": [1]}')])
    with pytest.raises(InvalidInput, match="ends inside"):
        packing.unpack_answers(answers[:-cut])
