"""Reliability and security campaigns (issue 5), run by ``make soak``.

Each campaign module exposes ``run(scale, env) -> CampaignResult``; ``run.py``
runs them all and prints one table. ``tests/test_soak_quick.py`` runs the same
campaigns with small counts inside ``make test``.
"""
