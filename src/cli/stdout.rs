//! Every line the command line prints goes through [`say!`]: when the
//! reader of standard output went away (`jobvisor items … | head`), the
//! command ends quietly with the status a shell reports for a command
//! ended by SIGPIPE, instead of `println!`'s panic ("failed printing to
//! stdout: Broken pipe"). The Rust runtime ignores SIGPIPE, so the write
//! fails with EPIPE, and this is the one place that handles it. Progress
//! bars (indicatif) draw on standard error and ignore write errors.

use std::io::Write as _;

/// The exit status of a command whose reader went away: 128 + SIGPIPE.
pub const READER_GONE: i32 = 141;

/// `println!` that ends the process quietly when the reader went away.
macro_rules! say {
    () => {
        $crate::cli::stdout::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::stdout::line(format_args!($($arg)*))
    };
}

/// Writes `args` and a newline to standard output (see the module).
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(READER_GONE);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}
