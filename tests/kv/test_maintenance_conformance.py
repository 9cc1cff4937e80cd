"""Maintenance calls answered as etcd 3.4 answers them, on both stores."""

from __future__ import annotations

from aetcd import rpc

from clustertui.backend.etcd import EtcdClient

NOSPACE = rpc.AlarmType.Value("NOSPACE")
CORRUPT = rpc.AlarmType.Value("CORRUPT")
GET, ACTIVATE, DEACTIVATE = (
    rpc.AlarmRequest.GET,
    rpc.AlarmRequest.ACTIVATE,
    rpc.AlarmRequest.DEACTIVATE,
)

# (action, member: "0" or "me", alarm) → (a header in the response?, the alarms it lists)
ALARM_CALLS = [
    ((GET, "0", 0), (False, [])),
    ((ACTIVATE, "0", NOSPACE), (False, [("0", "NOSPACE")])),
    ((ACTIVATE, "0", NOSPACE), (False, [("0", "NOSPACE")])),
    ((ACTIVATE, "me", NOSPACE), (False, [("me", "NOSPACE")])),
    ((GET, "0", 0), (False, [("0", "NOSPACE"), ("me", "NOSPACE")])),
    ((GET, "0", CORRUPT), (False, [])),
    ((DEACTIVATE, "0", NOSPACE), (False, [("0", "NOSPACE")])),
    ((DEACTIVATE, "0", NOSPACE), (False, [])),
    ((DEACTIVATE, "me", NOSPACE), (False, [("me", "NOSPACE")])),
    ((GET, "0", 0), (False, [])),
]
"""What etcd 3.4.23 answers: no Alarm response has a header (its applier builds the
response bare and its gRPC layer adds none; etcd 3.5 added one)."""


async def test_alarm_responses_are_etcds_headers_and_alarms(fresh_kv: EtcdClient) -> None:
    kv = fresh_kv
    await kv.connect()
    me = (await kv.maintenancestub.Status(rpc.StatusRequest())).header.member_id
    seen = []
    for (action, member, alarm), _expected in ALARM_CALLS:
        member_id = me if member == "me" else 0
        request = rpc.AlarmRequest(action=action, memberID=member_id, alarm=alarm)
        response = await kv.maintenancestub.Alarm(request)
        listed = sorted(
            ("me" if a.memberID == me else str(a.memberID), rpc.AlarmType.Name(a.alarm))
            for a in response.alarms
        )
        seen.append(((action, member, alarm), (response.HasField("header"), listed)))
    assert seen == ALARM_CALLS
