//! The `sshvisor` binary: `serve` runs the server, `ctl` talks to a running one. The command
//! line lives in `cli` (this binary's only module); the server is the `sshvisor` library.

mod cli;

/// mimalloc: kills and kill-alls cost much less CPU per connection than with glibc's malloc
/// (whose chunk coalescing dominated a kill-all's profile), for about 10 KiB more per idle
/// connection; docs/BENCHMARKS.md has both figures.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
