//! The interface between the monitor and the command layer.

use serde_json::Value;

use crate::args::Args;
use crate::error::QmpError;
use crate::event::Emitter;

/// Implements the QMP commands beyond the monitor's own (`qmp_capabilities`, `query-version`,
/// `query-commands`, `quit`, which always take precedence).
///
/// `call` runs on the thread of the connection that sent the command, so replies on one
/// connection keep their order; different connections call concurrently. A long command only
/// delays its own connection.
///
/// ```
/// use ringmirror_qmp::{Args, CallCtx, Handler, QmpError};
/// use serde_json::{json, Value};
///
/// struct Jobs;
///
/// impl Handler for Jobs {
///     fn commands(&self) -> Vec<&'static str> {
///         vec!["block-job-set-speed"]
///     }
///
///     fn call(&self, ctx: &CallCtx, command: &str, mut args: Args) -> Result<Value, QmpError> {
///         match command {
///             "block-job-set-speed" => {
///                 let device = args.req_str("device")?;
///                 let speed = args.req_i64("speed")?;
///                 args.finish()?;
///                 if speed < 0 {
///                     return Err(QmpError::invalid_parameter_value("speed", "a non-negative value"));
///                 }
///                 ctx.emitter().emit("JOB_SPEED_SET", json!({"id": device, "speed": speed}));
///                 Ok(Value::Null) // the client sees {"return": {}}
///             }
///             _ => Err(QmpError::unknown_command(command)),
///         }
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Runs `command`. `Ok(Value::Null)` is sent as `{"return": {}}`.
    fn call(&self, ctx: &CallCtx, command: &str, args: Args) -> Result<Value, QmpError>;

    /// The commands `call` implements. Asked once, when the monitor starts; a command not
    /// listed here gets `CommandNotFound` without reaching `call`.
    fn commands(&self) -> Vec<&'static str>;
}

/// A handler with no command: the monitor serves only its own commands.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCommands;

impl Handler for NoCommands {
    fn call(&self, _ctx: &CallCtx, command: &str, _args: Args) -> Result<Value, QmpError> {
        Err(QmpError::unknown_command(command))
    }

    fn commands(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

/// What a command knows about where it came from.
#[derive(Debug, Clone)]
pub struct CallCtx {
    connection: u64,
    emitter: Emitter,
}

impl CallCtx {
    /// A context (the monitor makes these; tests of a command layer may too).
    pub fn new(connection: u64, emitter: Emitter) -> Self {
        CallCtx {
            connection,
            emitter,
        }
    }

    /// A number identifying the client connection, unique within the monitor.
    pub fn connection(&self) -> u64 {
        self.connection
    }

    /// The event emitter the monitor delivers from.
    pub fn emitter(&self) -> &Emitter {
        &self.emitter
    }
}
