use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use soapcache::app::cli::{Cli, Command, LogFormat};
use soapcache::ops::access_log;
use soapcache::policy::PolicySet;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { policies } => check(&policies),
        Command::Serve(args) => {
            let _flush_on_exit = init_logging(args.log_format, "info");
            run(soapcache::app::server::serve(args))
        }
        Command::Explain(args) => soapcache::app::explain::run(&soapcache::app::explain::Request {
            policies: args.policies,
            path: args.path,
            headers: args.headers,
            file: args.file,
            json: args.json,
        }),
        Command::Demo(args) => {
            // The demo prints its own report; logs only for problems.
            let _flush_on_exit = init_logging(LogFormat::Text, "warn");
            run(soapcache::app::demo::run(args))
        }
    }
}

fn run<E: std::fmt::Display>(job: impl std::future::Future<Output = Result<(), E>>) -> ExitCode {
    // On one core (a container limit, `taskset`), a single-threaded runtime
    // does the same work without the work-stealing machinery.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    // Access lines wait in a batch until the runtime has nothing to do.
    builder.on_thread_park(access_log::flush);
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("soapcache: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(job);
    // Dropping the runtime drops unfinished requests, which log too.
    drop(runtime);
    access_log::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soapcache: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match PolicySet::load(path) {
        Ok(set) => {
            for line in set.summary() {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{} problem(s) found", errors.len());
            ExitCode::FAILURE
        }
    }
}

/// `RUST_LOG` filters (else `default`); access lines use target `soapcache::access`.
///
/// Lines are written by a background thread (tracing-appender), so a
/// request never waits on stderr; if the writer falls behind by more than
/// its buffer, lines are dropped rather than requests slowed. It writes
/// what has queued up in one go (the `BufWriter`, flushed whenever the
/// queue is empty). Access lines take their own, cheaper way to the same
/// writer (`access_log`). The returned guard flushes what is left when it
/// is dropped at exit.
fn init_logging(format: LogFormat, default: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // lapin warns of a "vanished promise" at every failed connection
    // attempt to RabbitMQ; soapcache logs the broker's state itself, once
    // per change. Kept unless RUST_LOG says something about lapin.
    let names_lapin = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("lapin"));
    if !names_lapin {
        if let Ok(quiet) = "lapin::promise=error".parse() {
            filter = filter.add_directive(quiet);
        }
    }
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) =
        tracing_appender::non_blocking(std::io::BufWriter::new(std::io::stderr()));
    let access_writer = writer.clone();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    access_log::install(access_writer, access_log::Style { format, ansi });
    guard
}
