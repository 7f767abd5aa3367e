//! Events: `{"timestamp": {"seconds": S, "microseconds": US}, "event": NAME, "data": {...}}`.
//!
//! An [`Emitter`] is the daemon's handle for emitting events from any thread. It fans each
//! event out to every subscriber: each negotiated monitor connection, and any in-process
//! [`EventStream`]. Emitting never blocks: every subscriber has a bounded queue, and one that
//! is full is dropped (a monitor connection is closed) rather than stalling the emitter, for a
//! slow client must not hold up a mirror job that reports progress.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use serde_json::{json, Map, Value};

use crate::json::to_qemu_string;

/// Wall-clock time of an event, as QEMU reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub seconds: u64,
    /// Microseconds within the second.
    pub microseconds: u32,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp {
            seconds: since.as_secs(),
            microseconds: since.subsec_micros(),
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event name, e.g. `BLOCK_JOB_READY`.
    pub name: String,
    /// The `data` member; `None` for events that have none (QEMU then omits the member).
    pub data: Option<Value>,
    /// When it was emitted.
    pub timestamp: Timestamp,
}

impl Event {
    /// The event as a JSON value.
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        map.insert("event".into(), Value::String(self.name.clone()));
        if let Some(data) = &self.data {
            map.insert("data".into(), data.clone());
        }
        map.insert(
            "timestamp".into(),
            json!({"seconds": self.timestamp.seconds, "microseconds": self.timestamp.microseconds}),
        );
        Value::Object(map)
    }

    /// The event as QEMU writes it on the wire (without the line end).
    pub fn to_json(&self) -> String {
        to_qemu_string(&self.to_value())
    }
}

/// What a monitor connection's writer sends: a reply or an event, serialised once.
#[derive(Debug, Clone)]
pub(crate) enum Outgoing {
    Line(String),
    Shared(Arc<str>),
}

impl Outgoing {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Outgoing::Line(s) => s,
            Outgoing::Shared(s) => s,
        }
    }
}

type OnOverflow = Box<dyn Fn() + Send + Sync>;

enum Target {
    Connection {
        tx: Sender<Outgoing>,
        on_overflow: OnOverflow,
    },
    Stream(Sender<Event>),
}

struct Subscriber {
    id: u64,
    target: Target,
}

#[derive(Default)]
struct Bus {
    next_id: AtomicU64,
    subscribers: Mutex<Vec<Subscriber>>,
}

impl Bus {
    fn lock(&self) -> MutexGuard<'_, Vec<Subscriber>> {
        // A panic elsewhere must not stop event delivery: the list stays consistent.
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Handle for emitting events (cheap to clone, usable from any thread).
#[derive(Clone, Default)]
pub struct Emitter {
    bus: Arc<Bus>,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter")
            .field("subscribers", &self.subscriber_count())
            .finish()
    }
}

/// Identifies a subscription so that it can be cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SubscriptionId(u64);

impl Emitter {
    /// A new event bus with no subscriber yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Emits an event stamped with the current time. `data` of `Value::Null` means "no data
    /// member". Returns the event as sent.
    pub fn emit(&self, name: &str, data: Value) -> Event {
        let event = Event {
            name: name.to_owned(),
            data: (!data.is_null()).then_some(data),
            timestamp: Timestamp::now(),
        };
        self.send(&event);
        event
    }

    /// Sends an already built event (its timestamp is kept).
    pub fn send(&self, event: &Event) {
        let line: Arc<str> = Arc::from(event.to_json());
        let mut overflowed = Vec::new();
        {
            let mut subs = self.bus.lock();
            let mut i = 0;
            while i < subs.len() {
                let full = match &subs[i].target {
                    Target::Connection { tx, .. } => tx
                        .try_send(Outgoing::Shared(line.clone()))
                        .map_err(|e| matches!(e, TrySendError::Full(_))),
                    Target::Stream(tx) => tx
                        .try_send(event.clone())
                        .map_err(|e| matches!(e, TrySendError::Full(_))),
                };
                match full {
                    Ok(()) => i += 1,
                    Err(full) => {
                        let sub = subs.remove(i);
                        if full {
                            overflowed.push(sub);
                        }
                    }
                }
            }
        }
        // Close overflowing connections outside the lock.
        for sub in overflowed {
            if let Target::Connection { on_overflow, .. } = sub.target {
                on_overflow();
            }
        }
    }

    /// Subscribes in-process: events arrive on the returned stream. If `capacity` events pile
    /// up unread, the stream is cut off (it yields the queued events, then ends).
    pub fn subscribe(&self, capacity: usize) -> EventStream {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        self.add(Target::Stream(tx));
        EventStream { rx }
    }

    /// Subscribes a monitor connection; `on_overflow` runs (once) if its queue is full.
    pub(crate) fn subscribe_connection(
        &self,
        tx: Sender<Outgoing>,
        on_overflow: OnOverflow,
    ) -> SubscriptionId {
        self.add(Target::Connection { tx, on_overflow })
    }

    fn add(&self, target: Target) -> SubscriptionId {
        let id = self.bus.next_id.fetch_add(1, Ordering::Relaxed);
        self.bus.lock().push(Subscriber { id, target });
        SubscriptionId(id)
    }

    /// Cancels a subscription (no-op if it is gone already).
    pub(crate) fn unsubscribe(&self, id: SubscriptionId) {
        self.bus.lock().retain(|s| s.id != id.0);
    }

    /// How many subscribers are attached (monitor connections and streams).
    pub fn subscriber_count(&self) -> usize {
        self.bus.lock().len()
    }
}

/// Events delivered in-process (see [`Emitter::subscribe`]).
#[derive(Debug)]
pub struct EventStream {
    rx: Receiver<Event>,
}

impl EventStream {
    /// Waits for the next event; `None` once the stream was cut off and drained.
    pub fn recv(&self) -> Option<Event> {
        self.rx.recv().ok()
    }

    /// Waits up to `timeout`; `Ok(None)` on timeout, `Err(())` once cut off and drained.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Event>, StreamClosed> {
        match self.rx.recv_timeout(timeout) {
            Ok(e) => Ok(Some(e)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(StreamClosed),
        }
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Result<Option<Event>, StreamClosed> {
        match self.rx.try_recv() {
            Ok(e) => Ok(Some(e)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(StreamClosed),
        }
    }
}

/// The stream was cut off (it overflowed or the emitter is gone) and holds nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("event stream closed: it overflowed or every emitter was dropped")]
pub struct StreamClosed;
