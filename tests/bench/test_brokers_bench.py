"""The broker comparison runs end to end at a tiny size (its own Redis, a RabbitMQ vhost of its
own, the farm's real workers on each) and prints its figures, the ratios last."""

from __future__ import annotations

import re

import pytest

from bench import brokers

pytestmark = pytest.mark.integration

RATES = re.compile(r"(redis|rabbitmq) +publish median +[\d,]+ tasks/s \(min [\d,]+, max [\d,]+\); "
                   r"drain median +[\d,]+ tasks/s \(min [\d,]+, max [\d,]+\)")


@pytest.mark.skipif(brokers.no_rabbitmq() is not None, reason=f"{brokers.no_rabbitmq()}")
def test_brokers_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    brokers.main(["--tasks", "200", "--rounds", "1"])
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"rabbitmq / redis: publish [\d.]+, drain [\d.]+", out[-1]), out
    assert sorted(m[1] for line in out if (m := RATES.fullmatch(line))) == ["rabbitmq", "redis"]
