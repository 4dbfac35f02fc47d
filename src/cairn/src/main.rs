//! `cairn`: PID 1 on the appliance, `cairn node` on a Linux host, and the CLI client.
//!
//! `main` only parses arguments and dispatches; each mode lives in its own module. Exit codes
//! are documented in `control::ErrorCode::exit_code` (0 ok, 2 usage, 3 not found, 4 conflict,
//! 5 no space, 6 I/O, 7 cannot reach the node, 8 not allowed, 9 foreign data, 1 other).
#![forbid(unsafe_code)]

mod apibench;
mod bench;
mod benchmore;
mod cli;
mod client;
mod clustercmd;
mod nodecmd;
mod remote;
mod render;
mod vmcmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before any thread exists: large I/O buffers are reused instead of mapped fresh each time.
    blockdev::tune_allocator();
    // Appliance hook (owned by the appliance work): as PID 1, `cairn` is the init system.
    if std::process::id() == 1 {
        init::pid1_main()
    }
    // The VMM benchmark's memory child (a process holding one idle VM, measured from outside)
    // starts here, before the CLI is parsed: a VMM process has no use for the node's command
    // line, and what it runs is what is measured.
    if std::env::var_os(vmm::bench::CHILD_ENV).is_some() {
        return ExitCode::from(u8::try_from(benchmore::vmm_memory_child()).unwrap_or(1));
    }
    let args = cli::Cli::parse();
    let code = match args.command {
        cli::Command::Node(n) => nodecmd::run(n),
        cli::Command::Bench(cli::BenchCmd::Engine(b)) => bench::run(b),
        cli::Command::Bench(cli::BenchCmd::Api(b)) => apibench::run(b),
        cli::Command::Bench(cli::BenchCmd::Vmm(b)) => benchmore::run_vmm(b),
        cli::Command::Bench(cli::BenchCmd::Cluster(b)) => benchmore::run_cluster(b),
        cli::Command::Bench(cli::BenchCmd::ClusterPeer(b)) => benchmore::run_cluster_peer(b),
        cli::Command::Witness(w) => clustercmd::run_witness(w),
        cli::Command::Cluster(c) => clustercmd::run(&args.target, args.json, c),
        cmd => client::run(&args.target, args.json, cmd),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
