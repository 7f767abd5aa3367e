"""A small synchronous QMP client with a reader thread.

It reads the monitor as a *stream* of JSON objects (not lines), records every
event with the local monotonic time at which it arrived, and matches replies
by id. Used identically for qemu-storage-daemon and `ringmirror serve`."""

import json
import socket
import threading
import time


class QMPError(Exception):
    def __init__(self, cmd, err):
        super().__init__(f"{cmd}: {err.get('class')}: {err.get('desc')}")
        self.cls = err.get("class")
        self.desc = err.get("desc")


class QMP:
    def __init__(self, path, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(path))
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.sock = s
        self.cv = threading.Condition()
        self.replies = {}
        self.events = []          # (monotonic, message)
        self.greeting = None
        self.closed = False
        self.next_id = 1
        self.wlock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        with self.cv:
            if not self.cv.wait_for(lambda: self.greeting is not None or self.closed, timeout):
                raise TimeoutError("no QMP greeting")
        if self.closed:
            raise ConnectionError("monitor closed before greeting")
        self.cmd("qmp_capabilities")

    def _read(self):
        dec = json.JSONDecoder()
        buf = ""
        raw = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            now = time.monotonic()
            if not data:
                with self.cv:
                    self.closed = True
                    self.cv.notify_all()
                return
            raw += data
            try:
                buf += raw.decode()
                raw = b""
            except UnicodeDecodeError:
                continue
            while True:
                buf = buf.lstrip()
                if not buf:
                    break
                try:
                    msg, end = dec.raw_decode(buf)
                except json.JSONDecodeError:
                    break
                buf = buf[end:]
                with self.cv:
                    if "QMP" in msg:
                        self.greeting = msg
                    elif "event" in msg:
                        self.events.append((now, msg))
                    else:
                        self.replies[msg.get("id")] = msg
                    self.cv.notify_all()

    def send(self, cmd, args=None):
        with self.wlock:
            i = f"b{self.next_id}"
            self.next_id += 1
            m = {"execute": cmd, "id": i}
            if args:
                m["arguments"] = args
            self.sock.sendall(json.dumps(m).encode())
        return i

    def wait_reply(self, i, cmd="?", timeout=60.0):
        with self.cv:
            ok = self.cv.wait_for(lambda: i in self.replies or self.closed, timeout)
            if not ok:
                raise TimeoutError(f"no reply to {cmd} in {timeout}s")
            if i not in self.replies:
                raise ConnectionError(f"monitor closed while waiting for {cmd}")
            r = self.replies.pop(i)
        if "error" in r:
            raise QMPError(cmd, r["error"])
        return r.get("return")

    def cmd(self, cmd, args=None, timeout=60.0):
        return self.wait_reply(self.send(cmd, args), cmd, timeout)

    def wait_event(self, names, timeout, since=0.0, pred=None):
        """First event named in `names` that arrived at or after `since`
        (monotonic); returns (t, msg) or None on timeout."""
        if isinstance(names, str):
            names = (names,)
        deadline = time.monotonic() + timeout

        def find():
            for t, m in self.events:
                if t >= since and m["event"] in names and (pred is None or pred(m)):
                    return (t, m)
            return None
        with self.cv:
            while True:
                r = find()
                if r or self.closed:
                    return r
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cv.wait(min(left, 0.5))

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
