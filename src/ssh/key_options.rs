//! The options of an authorized_keys line (and of an authorized_principals line), as sshd(8)
//! reads them ("AUTHORIZED_KEYS FILE FORMAT"), and what they admit.
//!
//! Supported: `from="pattern-list"`, `command="..."`, `environment="NAME=value"`, `restrict`,
//! `no-pty` / `pty`, `no-port-forwarding` / `port-forwarding`, `no-agent-forwarding` /
//! `agent-forwarding`, `no-X11-forwarding` / `X11-forwarding`, `no-user-rc` / `user-rc`,
//! `permitopen="..."` / `permitlisten="..."` (sshvisor forwards nothing: they only narrow),
//! `expiry-time="YYYYMMDD[HHMM[SS]][Z]"`, `cert-authority` and `principals="a,b"`. Option names
//! are case-insensitive, as in sshd. Any other option, or a malformed one, is an error: the line
//! is refused rather than read as giving more access than it was written to give.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use crate::ssh::address_patterns::AddressPatterns;
use crate::ssh::restrictions::Restrictions;

/// The options of one line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyOptions {
    /// `from=`: the addresses the key may log in from.
    pub from: Option<AddressPatterns>,
    /// `command=`, `environment=`, and the permissions, in the order written.
    pub restrictions: Restrictions,
    /// `expiry-time=`: the key is refused after this time.
    pub expiry: Option<SystemTime>,
    /// `cert-authority`: the key is a CA whose user certificates may log in.
    pub cert_authority: bool,
    /// `principals=`: on a cert-authority line, the principals a certificate must name one of.
    pub principals: Option<Vec<String>>,
}

/// Splits a line into its options text (if any) and the rest (the key, or the principal).
/// `key_first` tells whether the rest parses as it is (then there are no options).
pub fn split_options(line: &str, key_first: impl Fn(&str) -> bool) -> Result<(&str, &str), String> {
    if key_first(line) {
        return Ok(("", line));
    }
    let bytes = line.as_bytes();
    let mut quoted = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted && bytes.get(i + 1) == Some(&b'"') => i += 1,
            b'"' => quoted = !quoted,
            b' ' | b'\t' if !quoted => {
                return Ok((&line[..i], line[i..].trim_start()));
            }
            _ => {}
        }
        i += 1;
    }
    if quoted {
        Err("an option's quoted value is not closed".into())
    } else {
        Err("no key after the options".into())
    }
}

impl KeyOptions {
    /// Parses a comma-separated options text (may be empty).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut options = Self {
            restrictions: Restrictions::unrestricted(),
            ..Self::default()
        };
        for (name, value) in split_list(text)? {
            options.apply(&name, value)?;
        }
        if options.principals.is_some() && !options.cert_authority {
            return Err("principals= is only valid with cert-authority".into());
        }
        Ok(options)
    }

    fn apply(&mut self, name: &str, value: Option<String>) -> Result<(), String> {
        let r = &mut self.restrictions;
        let lower = name.to_ascii_lowercase();
        let flag = |value: &Option<String>| match value {
            None => Ok(()),
            Some(_) => Err(format!("the option {name} takes no value")),
        };
        let needs = |value: Option<String>| {
            value.ok_or_else(|| format!("the option {name} needs a value ({name}=\"...\")"))
        };
        match lower.as_str() {
            "restrict" => {
                flag(&value)?;
                let (command, environment) =
                    (r.force_command.take(), std::mem::take(&mut r.environment));
                *r = Restrictions::restricted();
                r.force_command = command;
                r.environment = environment;
            }
            "pty" | "no-pty" => {
                flag(&value)?;
                r.pty = lower == "pty";
            }
            "port-forwarding" | "no-port-forwarding" => {
                flag(&value)?;
                r.port_forwarding = lower == "port-forwarding";
            }
            "agent-forwarding" | "no-agent-forwarding" => {
                flag(&value)?;
                r.agent_forwarding = lower == "agent-forwarding";
            }
            "x11-forwarding" | "no-x11-forwarding" => {
                flag(&value)?;
                r.x11_forwarding = lower == "x11-forwarding";
            }
            "user-rc" | "no-user-rc" => {
                flag(&value)?;
                r.user_rc = lower == "user-rc";
            }
            "cert-authority" => {
                flag(&value)?;
                self.cert_authority = true;
            }
            // Forwarding is never served: a list of what it may reach narrows nothing further.
            "permitopen" | "permitlisten" => {
                needs(value)?;
            }
            "command" => {
                if r.force_command.is_some() {
                    return Err("command= given twice".into());
                }
                r.force_command = Some(needs(value)?);
            }
            "environment" => {
                let value = needs(value)?;
                let (var, val) = value
                    .split_once('=')
                    .filter(|(n, _)| crate::ssh::restrictions::is_variable_name(n))
                    .ok_or_else(|| format!("environment=\"{value}\" is not NAME=value"))?;
                r.environment.push((var.to_string(), val.to_string()));
            }
            "from" => {
                if self.from.is_some() {
                    return Err("from= given twice".into());
                }
                self.from = Some(AddressPatterns::parse(&needs(value)?)?);
            }
            "expiry-time" => {
                if self.expiry.is_some() {
                    return Err("expiry-time= given twice".into());
                }
                self.expiry = Some(parse_expiry(&needs(value)?)?);
            }
            "principals" => {
                let list = needs(value)?;
                let names: Vec<String> = list
                    .split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect();
                if names.is_empty() {
                    return Err("principals= names no principal".into());
                }
                self.principals = Some(names);
            }
            _ => return Err(format!("the option {name} is not supported by sshvisor")),
        }
        Ok(())
    }

    /// Whether a login from `peer` at `now` is admitted by these options: its restrictions,
    /// or why not, in words fit for the key's holder (the address is theirs; the patterns
    /// are not told).
    pub fn admit(&self, peer: IpAddr, now: SystemTime) -> Result<Restrictions, String> {
        if let Some(expiry) = self.expiry {
            if now >= expiry {
                return Err(format!(
                    "this key expired at {} (expiry-time)",
                    humantime::format_rfc3339_seconds(expiry)
                ));
            }
        }
        if let Some(from) = &self.from {
            if !from.admits(peer) {
                return Err(format!(
                    "this key may not log in from {}",
                    peer.to_canonical()
                ));
            }
        }
        Ok(self.restrictions.clone())
    }
}

/// Splits `a,b="x,y",c` into names and unquoted values.
fn split_list(text: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            if !(c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(format!("unexpected {c:?} in the options"));
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() {
            return Err("an empty option".into());
        }
        let value = if chars.peek() == Some(&'=') {
            chars.next();
            if chars.next() != Some('"') {
                return Err(format!("the value of {name} must be in double quotes"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    None => return Err(format!("the value of {name} is not closed")),
                    Some('\\') if chars.peek() == Some(&'"') => {
                        chars.next();
                        value.push('"');
                    }
                    Some('"') => break,
                    Some(c) => value.push(c),
                }
            }
            Some(value)
        } else {
            None
        };
        out.push((name, value));
        match chars.next() {
            None => break,
            Some(',') if chars.peek().is_some() => {}
            Some(c) => return Err(format!("unexpected {c:?} after an option")),
        }
    }
    Ok(out)
}

/// `YYYYMMDD[HHMM[SS]][Z]`: local time unless it ends in `Z`, as sshd reads it.
fn parse_expiry(text: &str) -> Result<SystemTime, String> {
    let bad = || format!("expiry-time=\"{text}\" is not YYYYMMDD[HHMM[SS]][Z]");
    let (digits, utc) = match text.strip_suffix(['Z', 'z']) {
        Some(d) => (d, true),
        None => (text, false),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(bad());
    }
    let field = |range: std::ops::Range<usize>| -> u32 {
        digits.get(range).and_then(|d| d.parse().ok()).unwrap_or(0)
    };
    let (year, month, day) = (field(0..4), field(4..6), field(6..8));
    let (hour, minute, second) = (field(8..10), field(10..12), field(12..14));
    let stamp = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z");
    let as_utc = humantime::parse_rfc3339(&stamp).map_err(|_| bad())?;
    if utc {
        return Ok(as_utc);
    }
    // Local time: shift by the zone's offset at that moment.
    let secs = as_utc
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| bad())?
        .as_secs() as libc::time_t;
    let offset = local_offset(secs);
    let shifted = if offset >= 0 {
        as_utc.checked_sub(Duration::from_secs(offset as u64))
    } else {
        as_utc.checked_add(Duration::from_secs(offset.unsigned_abs()))
    };
    shifted.ok_or_else(bad)
}

/// The local zone's offset from UTC in seconds at `secs` (0 when it cannot be known).
fn local_offset(secs: libc::time_t) -> i64 {
    // SAFETY: `tm` is plain data (integers and a pointer), for which all zeroes is valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r writes only into the `tm` we own and reads only `secs`.
    let done = unsafe { libc::localtime_r(&secs, &mut tm) };
    if done.is_null() {
        0
    } else {
        tm.tm_gmtoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOM alice";

    fn is_key(s: &str) -> bool {
        s.starts_with("ssh-")
    }

    #[test]
    fn options_split_from_the_key_with_quoted_spaces_and_commas() {
        assert_eq!(split_options(KEY, is_key).unwrap(), ("", KEY));
        let line = format!("command=\"echo a, b \\\"c\\\"\",no-pty {KEY}");
        let (opts, rest) = split_options(&line, is_key).unwrap();
        assert_eq!(rest, KEY);
        let parsed = KeyOptions::parse(opts).unwrap();
        assert_eq!(
            parsed.restrictions.force_command.as_deref(),
            Some("echo a, b \"c\"")
        );
        assert!(!parsed.restrictions.pty);
        assert!(split_options("command=\"unclosed ssh-ed25519 AAAA", is_key).is_err());
    }

    #[test]
    fn restrict_then_pty_permits_only_the_terminal() {
        let o = KeyOptions::parse("restrict,pty").unwrap();
        assert!(o.restrictions.pty);
        assert!(!o.restrictions.port_forwarding && !o.restrictions.agent_forwarding);
        let o = KeyOptions::parse("RESTRICT").unwrap();
        assert!(!o.restrictions.pty);
        let o = KeyOptions::parse("").unwrap();
        assert_eq!(o.restrictions, Restrictions::unrestricted());
    }

    #[test]
    fn unknown_and_malformed_options_are_errors() {
        for bad in [
            "verify-required",
            "bogus",
            "from=10.0.0.1",
            "no-pty=\"x\"",
            "command",
            "environment=\"1BAD=x\"",
            "principals=\"a\"",
            "expiry-time=\"2020\"",
            "no-pty,,pty",
            "no-pty,",
        ] {
            assert!(KeyOptions::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn from_and_expiry_admit_or_say_why() {
        let now = SystemTime::now();
        let o = KeyOptions::parse("from=\"10.0.0.0/8\",expiry-time=\"29991231Z\"").unwrap();
        assert!(o.admit("10.1.1.1".parse().unwrap(), now).is_ok());
        let err = o.admit("127.0.0.1".parse().unwrap(), now).unwrap_err();
        assert_eq!(err, "this key may not log in from 127.0.0.1");
        let old = KeyOptions::parse("expiry-time=\"200001021504Z\"").unwrap();
        let err = old.admit("10.1.1.1".parse().unwrap(), now).unwrap_err();
        assert!(err.contains("expired at 2000-01-02T15:04:00Z"), "{err}");
        assert!(KeyOptions::parse("expiry-time=\"20000102\"").is_ok());
    }

    #[test]
    fn cert_authority_takes_principals() {
        let o = KeyOptions::parse("cert-authority,principals=\"ops, backup\"").unwrap();
        assert!(o.cert_authority);
        assert_eq!(o.principals.unwrap(), vec!["ops", "backup"]);
    }
}
