//! The per-connection protocol state machine: negotiation, request checks, the monitor's own
//! commands, and building replies. No I/O here: `Session::handle` maps one decoded item to one
//! reply line, so every rule can be tested without a socket.
//!
//! The order of checks is QEMU's (`monitor/qmp.c`, `qapi/qmp-dispatch.c`):
//! parse error → not an object → the request's members (in QDict order) → command lookup →
//! out-of-band check → arguments → the command. Before negotiation every `CommandNotFound`
//! reads "Expecting capabilities negotiation with 'qmp_capabilities'".

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde_json::{json, Map, Value};

use crate::args::Args;
use crate::error::{ErrorClass, QmpError};
use crate::handler::{CallCtx, Handler};
use crate::json::order::qdict_order;
use crate::json::{to_qemu_string, Decoded};

/// The commands the monitor implements itself.
pub(crate) const BUILTIN_COMMANDS: [&str; 4] = [
    "qmp_capabilities",
    "query-version",
    "query-commands",
    "quit",
];

/// The QEMU version the monitor reports (in the greeting and `query-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QemuVersion {
    /// Major version.
    pub major: u64,
    /// Minor version.
    pub minor: u64,
    /// Micro version.
    pub micro: u64,
}

impl Default for QemuVersion {
    /// 10.0.2: the qemu-storage-daemon whose protocol this crate reproduces.
    fn default() -> Self {
        QemuVersion {
            major: 10,
            minor: 0,
            micro: 2,
        }
    }
}

/// What the monitor says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerInfo {
    pub(crate) version: QemuVersion,
    pub(crate) package: String,
}

impl ServerInfo {
    fn version_value(&self) -> Value {
        json!({
            "qemu": {
                "major": self.version.major,
                "minor": self.version.minor,
                "micro": self.version.micro,
            },
            "package": self.package,
        })
    }

    /// The greeting line.
    pub(crate) fn greeting(&self) -> String {
        to_qemu_string(&json!({
            "QMP": {"version": self.version_value(), "capabilities": ["oob"]}
        }))
    }
}

/// What the connection must do besides sending the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    None,
    /// Capabilities were negotiated: start delivering events.
    Negotiated,
    /// `quit` succeeded: run the quit hook, send the reply, stop the monitor.
    Quit,
}

/// Everything a session needs from the monitor.
pub(crate) struct Env<'a> {
    pub(crate) handler: &'a dyn Handler,
    pub(crate) handler_commands: &'a [&'static str],
    pub(crate) info: &'a ServerInfo,
    pub(crate) ctx: &'a CallCtx,
}

/// One connection's protocol state.
#[derive(Debug, Default)]
pub(crate) struct Session {
    negotiated: bool,
    oob: bool,
}

impl Session {
    pub(crate) fn is_negotiated(&self) -> bool {
        self.negotiated
    }

    /// Handles one decoded item; returns the reply line (without line end) and the effect.
    pub(crate) fn handle(&mut self, item: Decoded, env: &Env<'_>) -> (String, Effect) {
        let request = match item {
            Ok(v) => v,
            Err(e) => {
                return (
                    error_reply(&QmpError::generic(e.to_string()), None),
                    Effect::None,
                )
            }
        };
        let Value::Object(mut request) = request else {
            let e = QmpError::generic("QMP input must be a JSON object");
            return (error_reply(&e, None), Effect::None);
        };
        let id = request.get("id").cloned();
        let (command, oob) = match self.check_request(&request) {
            Ok(c) => c,
            Err(e) => return (error_reply(&e, id.as_ref()), Effect::None),
        };
        let arguments = match request.remove("arguments") {
            Some(Value::Object(map)) => map,
            _ => Map::new(),
        };
        let result = self.dispatch(&command, oob, arguments, env);
        let result = match result {
            Err(e) if !self.negotiated && e.class == ErrorClass::CommandNotFound => {
                Err(QmpError::command_not_found(
                    "Expecting capabilities negotiation with 'qmp_capabilities'",
                ))
            }
            other => other,
        };
        match result {
            Ok((value, effect)) => (return_reply(value, id.as_ref()), effect),
            Err(e) => (error_reply(&e, id.as_ref()), Effect::None),
        }
    }

    /// QEMU's `qmp_dispatch_check_obj`: returns the command name and whether it is
    /// out-of-band.
    fn check_request(&self, request: &Map<String, Value>) -> Result<(String, bool), QmpError> {
        let allow_oob = self.oob;
        let mut exec_key: Option<&str> = None;
        for key in qdict_order(request.keys().map(String::as_str)) {
            let value = &request[key];
            match key {
                "execute" | "exec-oob" if key == "execute" || allow_oob => {
                    if !value.is_string() {
                        return Err(QmpError::generic(format!(
                            "QMP input member '{key}' must be a string"
                        )));
                    }
                    if let Some(first) = exec_key {
                        return Err(QmpError::generic(format!(
                            "QMP input member '{key}' clashes with '{first}'"
                        )));
                    }
                    exec_key = Some(key);
                }
                "arguments" => {
                    if !value.is_object() {
                        return Err(QmpError::generic(
                            "QMP input member 'arguments' must be an object",
                        ));
                    }
                }
                "id" => {}
                _ => {
                    return Err(QmpError::generic(format!(
                        "QMP input member '{key}' is unexpected"
                    )))
                }
            }
        }
        let Some(key) = exec_key else {
            return Err(QmpError::generic("QMP input lacks member 'execute'"));
        };
        let command = request[key].as_str().unwrap_or_default().to_owned();
        Ok((command, key == "exec-oob"))
    }

    fn dispatch(
        &mut self,
        command: &str,
        oob: bool,
        arguments: Map<String, Value>,
        env: &Env<'_>,
    ) -> Result<(Value, Effect), QmpError> {
        let available = if self.negotiated {
            BUILTIN_COMMANDS.contains(&command) || env.handler_commands.contains(&command)
        } else {
            command == "qmp_capabilities"
        };
        if !available {
            return Err(QmpError::unknown_command(command));
        }
        if oob {
            // No command of ours may run out-of-band (in QEMU only a few debug and migration
            // commands may).
            return Err(QmpError::generic(format!(
                "The command {command} does not support OOB"
            )));
        }
        let mut args = Args::new(arguments);
        match command {
            "qmp_capabilities" => {
                let mut want_oob = false;
                if let Some(list) = args.opt_list("enable")? {
                    for cap in list {
                        want_oob |= cap.enum_of(&["oob"])? == "oob";
                    }
                }
                args.finish()?;
                if self.negotiated {
                    return Err(QmpError::command_not_found(
                        "Capabilities negotiation is already complete, command ignored",
                    ));
                }
                self.negotiated = true;
                self.oob = want_oob;
                Ok((Value::Null, Effect::Negotiated))
            }
            "query-version" => {
                args.finish()?;
                Ok((env.info.version_value(), Effect::None))
            }
            "query-commands" => {
                args.finish()?;
                let names: Vec<Value> = BUILTIN_COMMANDS
                    .iter()
                    .chain(
                        env.handler_commands
                            .iter()
                            .filter(|c| !BUILTIN_COMMANDS.contains(c)),
                    )
                    .map(|name| json!({ "name": name }))
                    .collect();
                Ok((Value::Array(names), Effect::None))
            }
            "quit" => {
                args.finish()?;
                Ok((Value::Null, Effect::Quit))
            }
            _ => {
                let call = catch_unwind(AssertUnwindSafe(|| {
                    env.handler.call(env.ctx, command, args)
                }));
                match call {
                    Ok(result) => result.map(|v| (v, Effect::None)),
                    Err(_) => Err(QmpError::generic(format!(
                        "Internal error: command {command} failed unexpectedly (it panicked; \
                         see the daemon's log)"
                    ))),
                }
            }
        }
    }
}

/// `{"return": VALUE}` (an empty object for `null`) plus the request's `id`.
pub(crate) fn return_reply(value: Value, id: Option<&Value>) -> String {
    let value = if value.is_null() {
        Value::Object(Map::new())
    } else {
        value
    };
    let mut reply = Map::new();
    reply.insert("return".into(), value);
    if let Some(id) = id {
        reply.insert("id".into(), id.clone());
    }
    to_qemu_string(&Value::Object(reply))
}

/// `{"error": {"class": ..., "desc": ...}}` plus the request's `id`.
pub(crate) fn error_reply(e: &QmpError, id: Option<&Value>) -> String {
    let mut reply = Map::new();
    reply.insert(
        "error".into(),
        json!({"class": e.class.as_str(), "desc": e.desc}),
    );
    if let Some(id) = id {
        reply.insert("id".into(), id.clone());
    }
    to_qemu_string(&Value::Object(reply))
}
