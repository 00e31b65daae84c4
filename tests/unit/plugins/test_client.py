

def test_wire_errors_map_to_unreachable_or_failed():
    from ansible_collections.natsops.fleet.plugins.module_utils.errors import ExecutorError, ExecutorTaskError, ExecutorUnreachable
    from ansible_collections.natsops.fleet.plugins.module_utils.wire.contract import WireError
    auth = ExecutorError.from_wire(WireError("target_auth_failed", "refused", {"stage": "auth"}))
    assert isinstance(auth, ExecutorUnreachable) and auth.details == {"stage": "auth"}
    assert isinstance(ExecutorError.from_wire(WireError("timeout", "slow")), ExecutorTaskError)
