//! QMP error replies: `{"error": {"class": ..., "desc": ...}}`.
//!
//! The wording of every constructor below was checked against qemu-storage-daemon 10.0.2
//! (see `tests/qemu_compare.rs` for the ones the test suite re-checks on every run).

use std::fmt;

/// The `class` member of a QMP error reply.
///
/// QEMU only ever uses these five classes; almost everything is `GenericError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Any error that has no more specific class.
    GenericError,
    /// The command does not exist (or is not available yet: before `qmp_capabilities`).
    CommandNotFound,
    /// The device or job exists but is not active (QEMU uses it for "Block job 'X' not found").
    DeviceNotActive,
    /// The device does not exist.
    DeviceNotFound,
    /// The KVM capability is missing (kept for completeness; QEMU's schema lists it).
    KVMMissingCap,
}

impl ErrorClass {
    /// The class name exactly as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::KVMMissingCap => "KVMMissingCap",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error a command returns to the client: a class and a human-readable description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {desc}")]
pub struct QmpError {
    /// The error class.
    pub class: ErrorClass,
    /// The description, worded like QEMU's where QEMU has the same error.
    pub desc: String,
}

impl QmpError {
    /// An error of any class.
    pub fn new(class: ErrorClass, desc: impl Into<String>) -> Self {
        QmpError {
            class,
            desc: desc.into(),
        }
    }

    /// A `GenericError`.
    pub fn generic(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::GenericError, desc)
    }

    /// A `CommandNotFound` error with a custom description.
    pub fn command_not_found(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::CommandNotFound, desc)
    }

    /// A `DeviceNotActive` error.
    pub fn device_not_active(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::DeviceNotActive, desc)
    }

    /// A `DeviceNotFound` error.
    pub fn device_not_found(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::DeviceNotFound, desc)
    }

    /// A `KVMMissingCap` error.
    pub fn kvm_missing_cap(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::KVMMissingCap, desc)
    }

    /// `CommandNotFound` "The command X has not been found".
    pub fn unknown_command(command: &str) -> Self {
        Self::command_not_found(format!("The command {command} has not been found"))
    }

    /// "Parameter 'P' is missing" (P is the full path, e.g. `addr.data.path`).
    pub fn missing_parameter(path: &str) -> Self {
        Self::generic(format!("Parameter '{path}' is missing"))
    }

    /// "Parameter 'P' is unexpected" (P is the full path, e.g. `cache.zz`).
    pub fn unexpected_parameter(path: &str) -> Self {
        Self::generic(format!("Parameter '{path}' is unexpected"))
    }

    /// "Invalid parameter type for 'P', expected: T" (T is `string`, `integer`, `boolean`,
    /// `object`, `array`, `number`, `null`, or an alternate's type name such as `BlockdevRef`).
    pub fn invalid_parameter_type(path: &str, expected: &str) -> Self {
        Self::generic(format!(
            "Invalid parameter type for '{path}', expected: {expected}"
        ))
    }

    /// "Parameter 'P' expects E", QEMU's `QERR_INVALID_PARAMETER_VALUE`, e.g.
    /// `invalid_parameter_value("speed", "a non-negative value")` or
    /// `invalid_parameter_value("granularity", "a power of 2")`.
    pub fn invalid_parameter_value(name: &str, expects: &str) -> Self {
        Self::generic(format!("Parameter '{name}' expects {expects}"))
    }

    /// "Parameter 'P' does not accept value 'V'" (bad enum value; QEMU names only the last
    /// path component here, and `null` for list elements).
    pub fn bad_enum_value(name: &str, value: &str) -> Self {
        Self::generic(format!(
            "Parameter '{name}' does not accept value '{value}'"
        ))
    }

    /// `DeviceNotActive` "Block job 'X' not found" (the `block-job-*` verbs).
    pub fn block_job_not_found(id: &str) -> Self {
        Self::device_not_active(format!("Block job '{id}' not found"))
    }

    /// `GenericError` "Job not found" (the `job-*` verbs).
    pub fn job_not_found() -> Self {
        Self::generic("Job not found")
    }

    /// "Job 'X' in state 'S' cannot accept command verb 'V'".
    pub fn job_verb_refused(id: &str, state: &str, verb: &str) -> Self {
        Self::generic(format!(
            "Job '{id}' in state '{state}' cannot accept command verb '{verb}'"
        ))
    }

    /// "Failed to find node with node-name='X'" (`blockdev-del` of an unknown node).
    pub fn node_not_found(node_name: &str) -> Self {
        Self::generic(format!("Failed to find node with node-name='{node_name}'"))
    }

    /// "Cannot find device='X' nor node-name='X'" (a job's `device` that names nothing).
    pub fn device_or_node_not_found(name: &str) -> Self {
        Self::generic(format!(
            "Cannot find device='{name}' nor node-name='{name}'"
        ))
    }

    /// "Duplicate nodes with node-name='X'" (`blockdev-add` of an existing node name).
    pub fn duplicate_node_name(node_name: &str) -> Self {
        Self::generic(format!("Duplicate nodes with node-name='{node_name}'"))
    }
}
