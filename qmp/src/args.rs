//! Decoding a command's `arguments` with QEMU's error wording.
//!
//! QEMU's QAPI input visitor checks members in schema order, then reports the first member
//! nobody asked for. Handlers do the same with [`Args`]: ask for each member in the order the
//! QAPI schema lists it, then call [`Args::finish`] (on nested objects too, right after their
//! last member), and every error reads as qemu-storage-daemon's does:
//!
//! | problem | QEMU's wording (path is e.g. `addr.data.path`) |
//! | --- | --- |
//! | missing | `Parameter 'PATH' is missing` |
//! | wrong JSON type | `Invalid parameter type for 'PATH', expected: integer` |
//! | not an unsigned number | `Parameter 'PATH' expects uint64` |
//! | out of range for a narrow int | `Parameter 'NAME' expects uint32_t` (last component only) |
//! | bad enum value | `Parameter 'NAME' does not accept value 'V'` (last component only) |
//! | member nobody asked for | `Parameter 'PATH' is unexpected` |
//!
//! Inside lists QEMU's "last component" is the literal `null` (`Parameter 'null' does not
//! accept value 'bogus'`), and paths read `actions[0].data.node`; both are reproduced.
//! Like QEMU, an unsigned member accepts a negative integer and wraps it (`-1` is `u64::MAX`),
//! and JSON `null` counts as present (and then has the wrong type).
//!
//! ```
//! use ringmirror_qmp::{Args, QmpError};
//! use serde_json::json;
//!
//! fn set_speed(mut args: Args) -> Result<(String, i64), QmpError> {
//!     let device = args.req_str("device")?;
//!     let speed = args.req_i64("speed")?;
//!     args.finish()?;
//!     Ok((device, speed))
//! }
//!
//! let bad = Args::from_value(json!({"device": "j", "speed": "fast"})).unwrap();
//! assert_eq!(
//!     set_speed(bad).unwrap_err().desc,
//!     "Invalid parameter type for 'speed', expected: integer"
//! );
//! ```

use serde_json::{Map, Value};

use crate::error::QmpError;
use crate::json::order::first_unvisited;

/// The members of one JSON object being decoded (the `arguments`, or a nested object).
#[derive(Debug, Clone)]
pub struct Args {
    map: Map<String, Value>,
    path: String,
    keys: Vec<String>,
    visited: Vec<String>,
}

/// One member's value, with the names QEMU would use for it in an error.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    path: String,
    name: String,
    value: Value,
}

macro_rules! accessors {
    ($( $(#[$doc:meta])* $req:ident, $opt:ident, $method:ident -> $ty:ty; )*) => {
        $(
            $(#[$doc])*
            ///
            /// The `req_` form errors when the member is missing.
            pub fn $req(&mut self, name: &str) -> Result<$ty, QmpError> {
                self.req(name)?.$method()
            }

            $(#[$doc])*
            ///
            /// The `opt_` form returns `None` when the member is missing.
            pub fn $opt(&mut self, name: &str) -> Result<Option<$ty>, QmpError> {
                self.opt(name).map(Field::$method).transpose()
            }
        )*
    };
}

impl Args {
    /// The arguments of a command (the root object: paths start with the member names).
    pub fn new(map: Map<String, Value>) -> Self {
        Self::at(map, String::new())
    }

    /// Arguments from a JSON value, which must be an object.
    pub fn from_value(value: Value) -> Result<Self, QmpError> {
        match value {
            Value::Object(map) => Ok(Self::new(map)),
            _ => Err(QmpError::generic(
                "QMP input member 'arguments' must be an object",
            )),
        }
    }

    fn at(map: Map<String, Value>, path: String) -> Self {
        let keys = map.keys().cloned().collect();
        Args {
            map,
            path,
            keys,
            visited: Vec::new(),
        }
    }

    /// Where this object sits in the arguments (`""` for the root, e.g. `cache`, `actions[0]`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether no member is left to visit.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Looks at a member without visiting it.
    pub fn peek(&self, name: &str) -> Option<&Value> {
        self.map.get(name)
    }

    fn child_path(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{}", self.path, name)
        }
    }

    /// Visits an optional member.
    pub fn opt(&mut self, name: &str) -> Option<Field> {
        let value = self.map.remove(name)?;
        self.visited.push(name.to_owned());
        Some(Field {
            path: self.child_path(name),
            name: name.to_owned(),
            value,
        })
    }

    /// Visits a mandatory member: "Parameter 'PATH' is missing" when absent.
    pub fn req(&mut self, name: &str) -> Result<Field, QmpError> {
        let path = self.child_path(name);
        self.opt(name)
            .ok_or_else(|| QmpError::missing_parameter(&path))
    }

    accessors! {
        /// A string member.
        req_str, opt_str, str -> String;
        /// A boolean member.
        req_bool, opt_bool, bool -> bool;
        /// An `int` (int64) member.
        req_i64, opt_i64, i64 -> i64;
        /// An `int32` member.
        req_i32, opt_i32, i32 -> i32;
        /// A `uint64` member (a negative integer wraps, as in QEMU).
        req_u64, opt_u64, u64 -> u64;
        /// A `uint32` member.
        req_u32, opt_u32, u32 -> u32;
        /// A `uint16` member.
        req_u16, opt_u16, u16 -> u16;
        /// A `uint8` member.
        req_u8, opt_u8, u8 -> u8;
        /// A `size` member (bytes; same rules as `uint64`).
        req_size, opt_size, size -> u64;
        /// A `number` (double) member; integers are accepted.
        req_f64, opt_f64, f64 -> f64;
        /// A nested object, decoded with its own [`Args`] (call [`Args::finish`] on it).
        req_obj, opt_obj, obj -> Args;
        /// A list; each element is a [`Field`] whose path is `NAME[i]`.
        req_list, opt_list, list -> Vec<Field>;
    }

    /// A member of any type.
    pub fn req_any(&mut self, name: &str) -> Result<Value, QmpError> {
        Ok(self.req(name)?.into_value())
    }

    /// An optional member of any type.
    pub fn opt_any(&mut self, name: &str) -> Option<Value> {
        self.opt(name).map(Field::into_value)
    }

    /// An enum member: returns the matching entry of `values`.
    pub fn req_enum(
        &mut self,
        name: &str,
        values: &[&'static str],
    ) -> Result<&'static str, QmpError> {
        self.req(name)?.enum_of(values)
    }

    /// An optional enum member.
    pub fn opt_enum(
        &mut self,
        name: &str,
        values: &[&'static str],
    ) -> Result<Option<&'static str>, QmpError> {
        self.opt(name).map(|f| f.enum_of(values)).transpose()
    }

    /// Checks that every member was visited: "Parameter 'PATH' is unexpected" otherwise.
    /// When several are left, the one named is the one QEMU would name.
    pub fn finish(self) -> Result<(), QmpError> {
        if self.map.is_empty() {
            return Ok(());
        }
        let all: Vec<&str> = self.keys.iter().map(String::as_str).collect();
        let visited: Vec<&str> = self.visited.iter().map(String::as_str).collect();
        let key = first_unvisited(&all, &visited)
            .or_else(|| self.map.keys().next().map(String::as_str))
            .unwrap_or_default();
        Err(QmpError::unexpected_parameter(&self.child_path(key)))
    }

    /// The members not visited yet.
    pub fn into_map(self) -> Map<String, Value> {
        self.map
    }
}

macro_rules! narrow {
    ($( $(#[$doc:meta])* $name:ident, $wide:ident, $ty:ty, $label:literal; )*) => {
        $(
            $(#[$doc])*
            pub fn $name(self) -> Result<$ty, QmpError> {
                let name = self.name.clone();
                let wide = self.$wide()?;
                <$ty>::try_from(wide)
                    .map_err(|_| QmpError::invalid_parameter_value(&name, $label))
            }
        )*
    };
}

impl Field {
    /// The full path QEMU prints for this value (`cache.direct`, `actions[0]`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The last path component as QEMU prints it in range and enum errors (`null` in lists).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw value.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The raw value, by value.
    pub fn into_value(self) -> Value {
        self.value
    }

    /// "Invalid parameter type for 'PATH', expected: WHAT".
    pub fn type_error(&self, expected: &str) -> QmpError {
        QmpError::invalid_parameter_type(&self.path, expected)
    }

    /// The error for an alternate (a member that may be, say, a string or an object) whose
    /// value is neither: "Invalid parameter type for 'NAME', expected: TYPE" (QEMU prints the
    /// last path component and the alternate's type name, e.g. `BlockdevRef`).
    pub fn alternate_error(&self, type_name: &str) -> QmpError {
        QmpError::invalid_parameter_type(&self.name, type_name)
    }

    /// A string.
    pub fn str(self) -> Result<String, QmpError> {
        match self.value {
            Value::String(s) => Ok(s),
            _ => Err(self.type_error("string")),
        }
    }

    /// A boolean.
    pub fn bool(self) -> Result<bool, QmpError> {
        match self.value {
            Value::Bool(b) => Ok(b),
            _ => Err(self.type_error("boolean")),
        }
    }

    /// An `int` (int64): integers only, `1.0` is refused as QEMU does.
    pub fn i64(self) -> Result<i64, QmpError> {
        match self.value.as_i64() {
            Some(i) if !self.value.is_f64() => Ok(i),
            _ => Err(self.type_error("integer")),
        }
    }

    /// A `uint64`: a negative int64 is accepted and wraps, anything else is
    /// "Parameter 'PATH' expects uint64".
    pub fn u64(self) -> Result<u64, QmpError> {
        if let Value::Number(n) = &self.value {
            if let Some(u) = n.as_u64() {
                return Ok(u);
            }
            if let Some(i) = n.as_i64() {
                return Ok(i as u64);
            }
        }
        Err(QmpError::invalid_parameter_value(&self.path, "uint64"))
    }

    /// A `size` (same rules as `uint64`).
    pub fn size(self) -> Result<u64, QmpError> {
        self.u64()
    }

    narrow! {
        /// An `int32`.
        i32, i64, i32, "int32_t";
        /// An `int16`.
        i16, i64, i16, "int16_t";
        /// An `int8`.
        i8, i64, i8, "int8_t";
        /// A `uint32`.
        u32, u64, u32, "uint32_t";
        /// A `uint16`.
        u16, u64, u16, "uint16_t";
        /// A `uint8`.
        u8, u64, u8, "uint8_t";
    }

    /// A `number` (double); integers are accepted.
    pub fn f64(self) -> Result<f64, QmpError> {
        match self.value.as_f64() {
            Some(f) => Ok(f),
            None => Err(self.type_error("number")),
        }
    }

    /// JSON `null`.
    pub fn null(self) -> Result<(), QmpError> {
        match self.value {
            Value::Null => Ok(()),
            _ => Err(self.type_error("null")),
        }
    }

    /// An enum: a string that must be one of `values`.
    pub fn enum_of(self, values: &[&'static str]) -> Result<&'static str, QmpError> {
        let name = self.name.clone();
        let s = self.str()?;
        values
            .iter()
            .copied()
            .find(|v| *v == s)
            .ok_or_else(|| QmpError::bad_enum_value(&name, &s))
    }

    /// An object.
    pub fn obj(self) -> Result<Args, QmpError> {
        match self.value {
            Value::Object(map) => Ok(Args::at(map, self.path)),
            _ => Err(QmpError::invalid_parameter_type(&self.path, "object")),
        }
    }

    /// A list.
    pub fn list(self) -> Result<Vec<Field>, QmpError> {
        match self.value {
            Value::Array(items) => Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, value)| Field {
                    path: format!("{}[{i}]", self.path),
                    name: "null".to_owned(),
                    value,
                })
                .collect()),
            _ => Err(QmpError::invalid_parameter_type(&self.path, "array")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Args {
        Args::from_value(v).unwrap()
    }

    fn desc<T: std::fmt::Debug>(r: Result<T, QmpError>) -> String {
        r.unwrap_err().desc
    }

    #[test]
    fn wording_matches_qemu() {
        let mut a = args(json!({"speed": 1}));
        assert_eq!(desc(a.req_str("device")), "Parameter 'device' is missing");
        let mut a = args(json!({"speed": 1.0, "big": 18446744073709551615u64}));
        assert_eq!(
            desc(a.req_i64("speed")),
            "Invalid parameter type for 'speed', expected: integer"
        );
        assert_eq!(
            desc(a.req_i64("big")),
            "Invalid parameter type for 'big', expected: integer"
        );
        let mut a = args(json!({"t": -1, "g": -1, "s": "1"}));
        assert_eq!(a.req_u64("t").unwrap(), u64::MAX);
        assert_eq!(desc(a.req_u32("g")), "Parameter 'g' expects uint32_t");
        assert_eq!(desc(a.req_size("s")), "Parameter 's' expects uint64");
        let mut a = args(json!({"sync": "bogus"}));
        assert_eq!(
            desc(a.req_enum("sync", &["full", "top", "none"])),
            "Parameter 'sync' does not accept value 'bogus'"
        );
    }

    #[test]
    fn nested_paths() {
        let mut a = args(json!({"cache": {"direct": "x", "zz": 1}}));
        let mut cache = a.req_obj("cache").unwrap();
        assert_eq!(
            desc(cache.opt_bool("direct")),
            "Invalid parameter type for 'cache.direct', expected: boolean"
        );
        assert_eq!(desc(cache.finish()), "Parameter 'cache.zz' is unexpected");
        let mut a = args(json!({"addr": {"type": "unix", "data": {}}}));
        let mut addr = a.req_obj("addr").unwrap();
        addr.req_enum("type", &["unix", "inet"]).unwrap();
        let mut data = addr.req_obj("data").unwrap();
        assert_eq!(
            desc(data.req_str("path")),
            "Parameter 'addr.data.path' is missing"
        );
        let mut a = args(json!({"enable": ["oob", 1, "bogus"]}));
        let items = a.req_list("enable").unwrap();
        let mut it = items.into_iter();
        assert_eq!(it.next().unwrap().enum_of(&["oob"]).unwrap(), "oob");
        assert_eq!(
            desc(it.next().unwrap().str()),
            "Invalid parameter type for 'enable[1]', expected: string"
        );
        assert_eq!(
            desc(it.next().unwrap().enum_of(&["oob"])),
            "Parameter 'null' does not accept value 'bogus'"
        );
        let mut a = args(json!({"server": {"type": "bogus"}}));
        let mut server = a.req_obj("server").unwrap();
        assert_eq!(
            desc(server.req_enum("type", &["unix", "inet"])),
            "Parameter 'type' does not accept value 'bogus'"
        );
    }

    #[test]
    fn unexpected_members() {
        let a = args(json!({"a": 1, "b": 2, "c": 3}));
        assert_eq!(desc(a.finish()), "Parameter 'b' is unexpected");
        let mut a = args(json!({"device": "x", "foo": 2}));
        a.req_str("device").unwrap();
        assert_eq!(desc(a.finish()), "Parameter 'foo' is unexpected");
    }
}
