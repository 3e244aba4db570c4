//! Signal names as the client sends them (`INT`, `TERM`, ... without `SIG`), russh's `Sig`, and
//! the signals they stand for.

use nix::sys::signal::Signal;
use russh::Sig;

/// russh's `Sig` for a signal name (for `exit-signal`).
pub(crate) fn sig_of(name: &str) -> Sig {
    match name {
        "ABRT" => Sig::ABRT,
        "ALRM" => Sig::ALRM,
        "FPE" => Sig::FPE,
        "HUP" => Sig::HUP,
        "ILL" => Sig::ILL,
        "INT" => Sig::INT,
        "KILL" => Sig::KILL,
        "PIPE" => Sig::PIPE,
        "QUIT" => Sig::QUIT,
        "SEGV" => Sig::SEGV,
        "TERM" => Sig::TERM,
        "USR1" => Sig::USR1,
        other => Sig::Custom(other.to_string()),
    }
}

/// The client's name for a signal russh parsed (`Sig` → `INT`, `TERM`, ...).
pub fn sig_name(sig: &Sig) -> String {
    match sig {
        Sig::Custom(name) => name.clone(),
        // russh's named signals are its variants, spelt as the protocol spells them.
        named => format!("{named:?}"),
    }
}

/// The signal a client names (`INT`, `TERM`, ... without `SIG`).
pub(crate) fn signal_named(name: &str) -> Result<Signal, String> {
    let full = format!("SIG{name}");
    full.parse::<Signal>().map_err(|_| {
        format!(
            "unknown signal {:?}",
            name.chars().take(32).collect::<String>()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_map_to_signals_and_unknown_ones_are_refused() {
        assert_eq!(signal_named("INT").unwrap(), Signal::SIGINT);
        assert_eq!(signal_named("USR2").unwrap(), Signal::SIGUSR2);
        assert!(signal_named("FROBNICATE")
            .unwrap_err()
            .contains("unknown signal"));
        assert!(signal_named("").is_err());
    }

    #[test]
    fn russh_signal_names_round_trip() {
        for name in [
            "ABRT", "ALRM", "FPE", "HUP", "ILL", "INT", "KILL", "PIPE", "QUIT", "SEGV", "TERM",
            "USR1", "USR2", "WINCH",
        ] {
            assert_eq!(sig_name(&sig_of(name)), name);
        }
        assert!(matches!(sig_of("INT"), Sig::INT));
        assert!(matches!(sig_of("USR2"), Sig::Custom(ref n) if n == "USR2"));
    }
}
