"""The close table (gateway/core/closerules.py) as data: what each event sends on each leg."""

from __future__ import annotations

from gateway.core.closecodes import NOT_ON_WIRE
from gateway.core.closerules import CLOSE_RULES, Event, From, LegName, rule_for


def test_the_table_never_puts_a_reserved_code_on_the_wire() -> None:
    """No rule sends 1005, 1006 or 1015 as a fixed code; every event has a rule where the session raises it."""
    for rule in CLOSE_RULES:
        for leg in LegName:
            code = rule.send_on(leg).code
            assert not isinstance(code, int) or code not in NOT_ON_WIRE, rule
    for event in Event:
        legs = [rule.leg for rule in CLOSE_RULES if rule.event is event]
        assert legs, event
    assert rule_for(Event.PEER_LOST, LegName.CLIENT).send_on(LegName.CLIENT).code is From.NOTHING
    assert rule_for(Event.PEER_CLOSED, LegName.UPSTREAM).send_on(LegName.CLIENT).code is From.PEER
