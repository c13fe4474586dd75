"""Artifacts: ids and the serialized form."""

from __future__ import annotations

import uuid

from flock.core.artifacts import new_id


def test_new_ids_are_canonical_random_uuids() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
