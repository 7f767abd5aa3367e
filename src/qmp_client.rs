//! A small synchronous QMP client, for `ringmirror mirror` against a running
//! daemon (ringmirror serve or qemu-storage-daemon).

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::{json, Value};

/// A connected, negotiated QMP session.
pub struct QmpClient {
    stream: UnixStream,
    rx: Receiver<Value>,
    /// Events received while waiting for replies.
    pending_events: Vec<Value>,
    next_id: u64,
}

impl QmpClient {
    /// Connect to `path`, read the greeting and negotiate capabilities.
    pub fn connect(path: &Path) -> Result<QmpClient, String> {
        let stream = UnixStream::connect(path)
            .map_err(|e| format!("cannot connect to the QMP monitor {}: {e}", path.display()))?;
        let reader = stream
            .try_clone()
            .map_err(|e| format!("cannot clone the socket: {e}"))?;
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            let de = serde_json::Deserializer::from_reader(BufReader::new(reader));
            for v in de.into_iter::<Value>() {
                match v {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        let mut c = QmpClient {
            stream,
            rx,
            pending_events: Vec::new(),
            next_id: 0,
        };
        let greeting = c.rx.recv_timeout(Duration::from_secs(10)).map_err(|_| {
            "no QMP greeting within 10 s (a QEMU monitor serves one client at a \
                     time: is another one connected?)"
                .to_string()
        })?;
        if greeting.get("QMP").is_none() {
            return Err(format!("not a QMP monitor (greeting: {greeting})"));
        }
        c.execute("qmp_capabilities", json!({}))?;
        Ok(c)
    }

    /// Run a command; `Err` carries the monitor's error description.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = format!("rm-{}", self.next_id);
        let msg = json!({"execute": command, "arguments": arguments, "id": id});
        self.stream
            .write_all(format!("{msg}\n").as_bytes())
            .map_err(|e| format!("QMP connection lost: {e}"))?;
        loop {
            let v = self
                .rx
                .recv()
                .map_err(|_| "QMP connection closed".to_string())?;
            if v.get("event").is_some() {
                self.pending_events.push(v);
                continue;
            }
            if v.get("id").and_then(Value::as_str) != Some(&id) {
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            let desc = v
                .pointer("/error/desc")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            return Err(desc.to_string());
        }
    }

    /// The next event, waiting up to `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Value>, String> {
        if !self.pending_events.is_empty() {
            return Ok(Some(self.pending_events.remove(0)));
        }
        loop {
            match self.rx.recv_timeout(timeout) {
                Ok(v) if v.get("event").is_some() => return Ok(Some(v)),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => return Err("QMP connection closed".into()),
            }
        }
    }
}
