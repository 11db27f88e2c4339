"""A wrong property or project gets the documented names and a did-you-mean (issue 13, 7)."""

from __future__ import annotations

import httpx
import pytest

import braincircuits_async as bca
from braincircuits_async import testing
from braincircuits_async._chunking import not_found_hint

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("prop", "project", "detail", "says"),
    [
        ("link_pr", "hemibrain", "unknown property 'link_pr' in project 'hemibrain'",
         "property 'link_pr' is not known in project 'hemibrain'; the documented properties "
         "are size, link_pre, link_post, neurotransmitter, connectivity, nucleus, soma, "
         "mitochondria, dcv; did you mean 'link_pre'?"),
        ("my_prop", "hemibrain", "unknown property 'my_prop'", "dcv)"),  # nothing close
        ("size", "fruitfly_fafb_flywre", "unknown project 'fruitfly_fafb_flywre'",
         "project 'fruitfly_fafb_flywre' is not known there; the documented projects are "
         "fruitfly_fafb_flywire, fruitfly_fanc_cave; did you mean 'fruitfly_fafb_flywire'?"),
        ("Size", "hemibrain", "Not Found",
         "check the property and project names, and base_url: the documented properties are "),
        ("Size", "hemibrain", "Not Found", "did you mean 'size'?"),
        ("size", "fruitfly_fanc", "Not Found", "did you mean 'fruitfly_fanc_cave'?"),
    ],
)  # fmt: skip
def test_not_found_hint(prop: str, project: str, detail: str, says: str) -> None:
    assert says in not_found_hint(prop, project, detail)


def test_no_did_you_mean_for_a_documented_name() -> None:
    assert "did you mean" not in not_found_hint("size", "hemibrain", "unknown property 'size'")


@pytest.mark.parametrize(
    ("prop", "project", "expected"),
    [
        ("link_pr", "hemibrain", r"did you mean 'link_pre'\?"),
        ("size", "fruitfly_fafb_flywre", r"did you mean 'fruitfly_fafb_flywire'\?"),
    ],
)
async def test_the_fakes_404_names_the_documented_names(
    prop: str, project: str, expected: str
) -> None:
    async with bca.AsyncClient(
        token=testing.DEFAULT_TOKEN,
        cave_token=testing.DEFAULT_CAVE_TOKEN,
        base_url="http://fake.test",
        transport=httpx.ASGITransport(app=testing.FakeBrainCircuits()),
    ) as client:
        with pytest.raises(bca.APIStatusError, match=expected) as caught:
            await client.fetch_property(prop, [720575940600000001], project=project)
    assert caught.value.status_code == 404
