//! The tree's internal messages cannot be built outside this crate: each case in `sealed/` is an
//! outside crate trying to forge one, and must fail to compile with the error pinned beside it.
//!
//! Regenerate the `.stderr` files after a rustc upgrade with `TRYBUILD=overwrite cargo test -p
//! sshvisor-actors --test sealed`, and check that every one still says the forgery is refused.

#[test]
fn an_outside_crate_cannot_forge_internal_messages() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/sealed/*.rs");
}
