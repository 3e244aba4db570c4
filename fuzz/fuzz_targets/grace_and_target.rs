//! A grace and an ID (prefix), as an operator types them (see `fuzz/checks.rs`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    checks::grace_text(&text);
    checks::target_text(&text);
});
