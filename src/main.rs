//! `ringmirror`: copy disks, serve them over NBD with a QMP monitor, and
//! mirror them live. See `ringmirror --help`.
#![forbid(unsafe_code)]

mod copy;
mod mirror_cmd;
mod progress;
mod qmp_client;
mod serve;
mod signals;
mod units;

use clap::{Parser, Subcommand};

/// A thread-per-core io_uring storage engine with a live disk mirror job.
#[derive(Parser, Debug)]
#[command(name = "ringmirror", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Copy a disk image or block device, sparse-aware, at the disk's limit.
    Copy(copy::CopyArgs),
    /// Mirror a disk live, with progress: on a running daemon, or two images.
    Mirror(mirror_cmd::MirrorArgs),
    /// Serve disks over NBD with a QMP monitor (a qemu-storage-daemon drop-in).
    Serve(serve::ServeArgs),
}

/// An error for the user: one line, and an exit code.
#[derive(Debug)]
pub struct CliError {
    message: String,
    code: i32,
}

impl CliError {
    /// A runtime failure (exit code 1).
    pub fn msg(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: 1,
        }
    }

    /// Bad arguments (exit code 2).
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: 2,
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let (name, res) = match cli.command {
        Command::Copy(a) => ("copy", copy::run(a)),
        Command::Serve(a) => ("serve", serve::run(a)),
        Command::Mirror(a) => ("mirror", mirror_cmd::run(a)),
    };
    if let Err(e) = res {
        eprintln!("ringmirror {name}: {}", e.message);
        std::process::exit(e.code);
    }
}
