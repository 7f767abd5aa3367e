"""Drives a ringmirror QMP monitor with the real `qemu.qmp` client (asyncio QMPClient).

Usage: qmp_client_check.py SOCKET_PATH
Prints "OK <n> checks" and exits 0 on success; any failure raises (exit status 1).
"""

import asyncio
import sys

from qemu.qmp import ExecuteError, QMPClient

checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


async def expect_error(qmp, cmd, args, cls, desc=None):
    try:
        await qmp.execute(cmd, args)
    except ExecuteError as err:
        check(err.error.error.class_ == cls, f"{cmd}: class {err.error.error.class_!r} != {cls!r}")
        if desc is not None:
            check(err.error.error.desc == desc, f"{cmd}: desc {err.error.error.desc!r} != {desc!r}")
        return
    raise AssertionError(f"{cmd} {args} should have failed with {cls}")


async def main(path):
    qmp = QMPClient("ringmirror-test")
    await qmp.connect(path)  # reads the greeting, negotiates (enabling oob)
    greeting = qmp.greeting
    check(greeting is not None, "no greeting")
    check("oob" in greeting.QMP.capabilities, "oob not offered")
    check(greeting.QMP.version["qemu"]["major"] == 10, "greeting version")

    version = await qmp.execute("query-version")
    check(version["qemu"] == {"major": 10, "minor": 0, "micro": 2}, f"query-version {version}")
    check(version["package"].startswith("ringmirror "), f"package {version['package']}")

    names = {c["name"] for c in await qmp.execute("query-commands")}
    check({"qmp_capabilities", "quit", "echo", "emit"} <= names, f"query-commands {names}")

    payload = {"s": "}{\"][ é 😀", "n": [1, -2, 3.5, None, True], "o": {"deep": {"x": []}}}
    check(await qmp.execute("echo", payload) == payload, "echo round trip")

    # Several commands in flight at once: replies are matched by id.
    results = await asyncio.gather(*(qmp.execute("echo", {"i": i}) for i in range(20)))
    check(results == [{"i": i} for i in range(20)], f"concurrent echoes {results}")

    await expect_error(qmp, "no-such-command", None, "CommandNotFound",
                       "The command no-such-command has not been found")
    await expect_error(qmp, "block-job-set-speed", {"device": "j", "speed": "fast"}, "GenericError",
                       "Invalid parameter type for 'speed', expected: integer")
    await expect_error(qmp, "block-job-set-speed", {"device": "j", "speed": 1}, "DeviceNotActive",
                       "Block job 'j' not found")
    await expect_error(qmp, "drive-mirror", {"device": "d", "target": "t", "sync": "bogus"},
                       "GenericError", "Parameter 'sync' does not accept value 'bogus'")
    await expect_error(qmp, "qmp_capabilities", None, "CommandNotFound",
                       "Capabilities negotiation is already complete, command ignored")

    # Events: emitted by a command, delivered with a timestamp.
    await qmp.execute("emit", {"name": "TEST_EVENT", "data": {"n": 7}})
    event = await asyncio.wait_for(qmp.events.get(), 10)
    check(event["event"] == "TEST_EVENT", f"event {event}")
    check(event["data"] == {"n": 7}, f"event data {event}")
    check(event["timestamp"]["seconds"] > 1_600_000_000, f"timestamp {event}")
    check(0 <= event["timestamp"]["microseconds"] < 1_000_000, f"timestamp {event}")

    # A second client sees events too.
    other = QMPClient("second")
    await other.connect(path)
    await qmp.execute("emit", {"name": "BROADCAST"})
    event = await asyncio.wait_for(other.events.get(), 10)
    check(event["event"] == "BROADCAST" and "data" not in event, f"broadcast {event}")
    event = await asyncio.wait_for(qmp.events.get(), 10)
    check(event["event"] == "BROADCAST", f"broadcast on first client {event}")
    await other.disconnect()

    # quit: the reply (no SHUTDOWN event, as qemu-storage-daemon), then the server closes.
    check(await qmp.execute("quit") == {}, "quit reply")
    try:
        await qmp.disconnect()
    except EOFError:
        # The server closed the stream after quit, as QEMU does; QEMU's own test harness
        # (python/qemu/machine) expects this very exception here.
        pass
    print(f"OK {checks} checks")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
