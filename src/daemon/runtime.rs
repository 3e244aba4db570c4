//! The tokio runtime sshvisor is meant to run on: multi-threaded, and without tokio's LIFO slot
//! where the build allows it.
//!
//! A kill is a chain of a dozen hand-offs between tasks (supervisor, connection actor, session
//! actor, russh's connection task, back up to the supervisor). When a task wakes another, tokio
//! puts the woken one in the waking worker's LIFO slot: it runs next on that worker, and no other
//! worker may steal it or is even told about it. If that worker's thread loses its CPU right then
//! (preempted by another process, or its virtual CPU descheduled by the hypervisor, which on a
//! shared virtual machine happens several times a second for milliseconds at a time), the rest of
//! the chain waits for it while the other workers idle. With the slot off, the woken task goes to
//! the worker's stealable queue and an idle worker is woken to take it.
//!
//! Measured (bench/NOTES.md, "Kill latency: the LIFO slot"): at 10,000 live connections on a
//! two-core virtual machine, the p99 of 300 single kills was 4.6–16.7 ms in five runs with the
//! slot and 0.5–1.9 ms in four of five without it (the fifth met a 12 ms hold-up of the
//! machine); the p50 and the handshake rate did not change beyond the machine's noise.
//!
//! Turning the slot off is one of tokio's unstable options: it exists only in builds with
//! `--cfg tokio_unstable`, which this repository sets for itself (`.cargo/config.toml`). A build
//! without it (say, with `RUSTFLAGS` set, which replaces the repository's flags) gets tokio's
//! default runtime and loses nothing else. A program that embeds sshvisor builds its own runtime;
//! it gets the same effect from [`builder`] or from `Builder::disable_lifo_slot` in its own.

/// A multi-threaded runtime builder with every driver enabled and, in builds with
/// `--cfg tokio_unstable`, the LIFO slot off (see the module docs).
pub fn builder() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Whether [`builder`] turns tokio's LIFO slot off in this build (a function: clippy refuses
    /// an assertion on the constant itself).
    fn lifo_slot_off() -> bool {
        cfg!(tokio_unstable)
    }

    /// The repository's own builds (and so CI, and `cargo run -- serve`) get the option: the
    /// flag lives in `.cargo/config.toml`, and `RUSTFLAGS` in the environment would replace it.
    #[test]
    fn this_build_turns_the_lifo_slot_off() {
        assert!(
            lifo_slot_off(),
            "built without --cfg tokio_unstable: is RUSTFLAGS set? It replaces .cargo/config.toml's"
        );
    }

    /// A task woken by a worker whose thread then stops running is taken by another worker.
    /// The waker's thread is blocked on purpose here: it stands for a thread that lost its CPU.
    #[test]
    fn a_woken_task_does_not_wait_for_a_stalled_waker() {
        let runtime = builder().worker_threads(2).build().expect("a runtime");
        // Long, so that a loaded machine delaying the other worker cannot pass for the stall.
        let stall = Duration::from_secs(2);
        let waited = runtime.block_on(async move {
            let (tx, rx) = tokio::sync::oneshot::channel::<Instant>();
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
            let woken = tokio::spawn(async move {
                let _ = ready_tx.send(());
                let sent = rx.await.expect("the waker sends");
                sent.elapsed()
            });
            // The waker starts once the woken task is on its way to wait on its channel, so that
            // the send wakes it (rather than finding it not yet started, in a shared queue).
            ready_rx.await.expect("the woken task starts");
            tokio::spawn(async move {
                let _ = tx.send(Instant::now());
                std::thread::sleep(stall);
            });
            woken.await.expect("the woken task ends")
        });
        assert!(
            waited < stall / 2,
            "the woken task waited {waited:?} for the stalled worker that woke it"
        );
    }
}
