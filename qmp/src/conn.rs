//! One client connection: a reader thread (decode, dispatch, queue the reply) and a writer
//! thread (drain the queue to the socket).
//!
//! ```text
//!  socket ─read─► Decoder ─► Session ─reply─┐
//!                                           ├─► bounded queue ─► writer ─write─► socket
//!  Emitter (any thread) ─event (try_send)───┘
//! ```
//!
//! Replies wait for room in the queue (a client that does not read only slows itself down);
//! events never wait: a full queue closes the connection.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{Receiver, Sender};

use crate::event::Outgoing;
use crate::handler::CallCtx;
use crate::json::Decoder;
use crate::monitor::Shared;
use crate::session::{Effect, Env, Session};

const READ_CHUNK: usize = 64 << 10;
const WRITE_BATCH: usize = 256 << 10;

/// Serves one connection until the client leaves or the monitor stops.
pub(crate) fn serve(shared: Arc<Shared>, id: u64, stream: UnixStream) {
    let (tx, rx) = crossbeam_channel::bounded::<Outgoing>(shared.queue_len);
    let writer = stream.try_clone().and_then(|w| {
        thread::Builder::new()
            .name(format!("qmp-conn{id}-w"))
            .spawn(move || write_loop(w, rx))
    });
    let writer = match writer {
        Ok(w) => w,
        Err(_) => {
            let _ = stream.shutdown(Shutdown::Both);
            shared.connection_closed(id);
            return;
        }
    };
    if tx.send(Outgoing::Line(shared.info.greeting())).is_ok() {
        read_loop(&shared, id, &stream, &tx);
    }
    drop(tx);
    let _ = writer.join();
    shared.connection_closed(id);
}

fn read_loop(shared: &Shared, id: u64, stream: &UnixStream, tx: &Sender<Outgoing>) {
    let ctx = CallCtx::new(id, shared.emitter.clone());
    let env = Env {
        handler: &*shared.handler,
        handler_commands: &shared.handler_commands,
        info: &shared.info,
        ctx: &ctx,
    };
    let mut session = Session::default();
    let mut decoder = Decoder::with_limits(shared.limits);
    let mut subscription = None;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut items = Vec::new();
    'read: loop {
        let n = match (&*stream).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        decoder.feed(&buf[..n], &mut items);
        for item in items.drain(..) {
            let (line, effect) = session.handle(item, &env);
            if effect == Effect::Quit {
                // As qemu-storage-daemon does: the daemon shuts down (jobs
                // cancelled, exports deleted, their events sent) before the
                // reply to `quit`.
                shared.run_quit_hook();
            }
            if tx.send(Outgoing::Line(line)).is_err() {
                break 'read; // the writer is gone: the client left
            }
            match effect {
                Effect::None => {}
                Effect::Negotiated => {
                    debug_assert!(session.is_negotiated());
                    let Ok(kill) = stream.try_clone() else {
                        break 'read;
                    };
                    subscription = Some(shared.emitter.subscribe_connection(
                        tx.clone(),
                        Box::new(move || {
                            let _ = kill.shutdown(Shutdown::Both);
                        }),
                    ));
                }
                Effect::Quit => {
                    // qemu-storage-daemon sends no SHUTDOWN event (qemu-system does).
                    shared.request_stop();
                    break 'read;
                }
            }
        }
    }
    if let Some(s) = subscription {
        shared.emitter.unsubscribe(s);
    }
}

fn write_loop(mut stream: UnixStream, rx: Receiver<Outgoing>) {
    let mut out = Vec::with_capacity(4096);
    while let Ok(first) = rx.recv() {
        out.clear();
        push_line(&mut out, &first);
        while out.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(next) => push_line(&mut out, &next),
                Err(_) => break,
            }
        }
        if stream.write_all(&out).is_err() {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

fn push_line(out: &mut Vec<u8>, msg: &Outgoing) {
    out.extend_from_slice(msg.as_str().as_bytes());
    out.extend_from_slice(b"\r\n");
}
