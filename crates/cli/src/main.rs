//! The `toxaudit` command. Thin by design: it parses arguments, sets up
//! logging, and hands each subcommand to its module under `commands/`, which
//! calls the libraries (domain, eventlog, the services).

#![forbid(unsafe_code)]

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// toxaudit: record botulinum toxin treatment of cervical dystonia and audit,
/// live, how secondary non-response is managed against the BNN recommendations.
#[derive(Debug, Parser)]
#[command(name = "toxaudit", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check NDJSON event files against the contract, without a log.
    Validate(commands::validate::Args),
    /// Check NDJSON event files against the contract and the log, then append them.
    Import(commands::import::Args),
    /// Print every event of the log as NDJSON, with position, recorded_at and recorded_by.
    Export(commands::export::Args),
    /// Print the BNN audit of secondary non-response (json, table, md, csv, html).
    Report(commands::report::Args),
    /// Show one patient's timeline, SNR classification, BNN steps and failed standards.
    Patient(commands::patient::Args),
    /// Write seeded demo data (NDJSON) to standard output.
    DemoData(commands::demo_data::Args),
    /// Run ingest, assessment and reporting in one process (embedded log, or --nats).
    Up(commands::up::Args),
    /// Run one service alone: ingest, assessment or reporting (usually with --nats).
    Serve(commands::serve::Args),
    /// Issue bearer tokens for the services.
    Token(commands::token::Args),
    /// Multi-site deployments: create or extend the hub's network stream.
    Network(commands::network::Args),
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Validate(args) => commands::validate::run(args),
        Command::Import(args) => commands::import::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Report(args) => commands::report::run(args),
        Command::Patient(args) => commands::patient::run(args),
        Command::DemoData(args) => commands::demo_data::run(args),
        Command::Up(args) => commands::up::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Token(args) => commands::token::run(args),
        Command::Network(args) => commands::network::run(args),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs go to stderr (stdout carries data: NDJSON, reports); `RUST_LOG`
/// chooses the level, warnings by default. Colours only on a terminal: under
/// journald or a log file they would be escape codes in every line.
fn init_tracing() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
