"""Names follow one rule however a dataset arrives: the JSON API refused control characters
and names past 200 characters, but a CSV upload took a 100 KB column name or a tab in it."""

from __future__ import annotations

import pytest

from tests.security.conftest import Api

BAD_NAMES = ["x" * 100_000, "a\tb", "a\nb", "nul\x00", "\x7fdel", ""]


def _csv(api: Api, header: str, name: str = "d") -> tuple[int, str]:
    body = f"{header},target\n1,a\n2,b\n".encode()
    r = api.http.post(
        "/v1/datasets",
        files={"file": ("d.csv", body, "text/csv")},
        data={"target": "target", "name": name},
        headers=api.a,
    )
    return r.status_code, r.json()["detail"]


def _json(api: Api, feature_name: str, name: str = "d") -> tuple[int, str]:
    body = {
        "name": name,
        "features": [[1.0], [2.0]],
        "targets": ["a", "b"],
        "feature_names": [feature_name],
    }
    r = api.http.post("/v1/datasets", json=body, headers=api.a)
    return r.status_code, r.json()["detail"]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=["100KB", "tab", "newline", "nul", "del", "empty"])
def test_csv_and_json_refuse_the_same_names(api: Api, bad: str) -> None:
    before = api.row_counts()
    if "\n" not in bad and bad:  # a newline or nothing can't be a CSV header cell as such
        status, detail = _csv(api, bad)
        assert status == 422, detail
        assert len(detail) < 1_000
    status, detail = _json(api, bad)
    assert status == 422, detail
    if bad.strip("\x00\x7f"):
        status, detail = _csv(api, "x", name=bad)
        assert status == 422, detail
    assert api.row_counts() == before
