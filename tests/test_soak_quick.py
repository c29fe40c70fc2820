"""The reliability campaigns of ``make soak`` with small counts (about a minute in all).

Each campaign must lose no data and find nothing new. Findings already
reported have a minimal reproduction in ``tests/test_regressions.py``
(strict xfail); they are listed in ``KNOWN`` with the test that reproduces
them, and leave this list when they are fixed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import S3Server
from tests.soak.env import SoakEnv, create_bucket
from tests.soak.report import CampaignResult, findings_text
from tests.soak.run import CAMPAIGNS
from tests.soak.scale import QUICK

pytestmark = pytest.mark.slow

KNOWN: dict[str, str] = {}  # finding kind (regex) -> its test in test_regressions.py


@pytest.fixture(scope="module")
def soak_env(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoakEnv]:
    env = SoakEnv(tmp_path_factory.mktemp("soak"), s3_server)
    create_bucket(env)
    yield env


def unknown_findings(result: CampaignResult) -> list[str]:
    return [f"{f.kind}: {f.detail}" for f in result.findings
            if not any(re.fullmatch(pattern, f.kind) for pattern in KNOWN)]


@pytest.mark.parametrize("campaign", list(CAMPAIGNS))
def test_quick_campaign_loses_nothing_and_finds_nothing_new(campaign: str, soak_env: SoakEnv) -> None:
    result = CAMPAIGNS[campaign](QUICK, soak_env)
    assert result.trials > 0
    assert not result.data_lost, findings_text([result])
    assert unknown_findings(result) == [], findings_text([result])


def test_known_findings_name_existing_regression_tests() -> None:
    source = (Path(__file__).parent / "test_regressions.py").read_text()
    for test in set(KNOWN.values()):
        assert f"def {test}(" in source, test
