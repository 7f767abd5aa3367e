//! JSON as QEMU reads and writes it: a streaming decoder with QEMU's error recovery and
//! wording, and a writer with QEMU's formatting.

mod decoder;
mod invariants;
mod lexer;
pub(crate) mod order;
mod parser;
mod utf8;
mod writer;

pub use decoder::{DecodeError, Decoded, Decoder, Limits};
#[doc(hidden)]
pub use invariants::check_decoder_invariants;
pub use writer::{to_qemu_string, write_value};
