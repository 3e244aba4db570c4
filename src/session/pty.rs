//! Pseudo-terminals for interactive sessions: opening one with the client's size and modes,
//! resizing it, and reading and writing its master side from tokio.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use sshvisor_actors::PtySpec;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::warn;

/// The largest terminal accepted, in characters either way; larger requests are clamped.
pub const MAX_DIMENSION: u32 = 4096;
/// The longest `TERM` value accepted.
pub const MAX_TERM: usize = 64;

/// Checks and clamps what a client asked for; `Err` says why it cannot be used at all.
pub fn validate(spec: &PtySpec) -> Result<PtySpec, String> {
    if spec.term.is_empty()
        || spec.term.len() > MAX_TERM
        || !spec
            .term
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
    {
        return Err(format!(
            "terminal type {:?} is not a plausible TERM value",
            spec.term.chars().take(MAX_TERM).collect::<String>()
        ));
    }
    let clamp = |what: &str, value: u32, default: u32| -> u32 {
        if value == 0 {
            default
        } else if value > MAX_DIMENSION {
            warn!(what, value, max = MAX_DIMENSION, "terminal size clamped");
            MAX_DIMENSION
        } else {
            value
        }
    };
    Ok(PtySpec {
        term: spec.term.clone(),
        cols: clamp("cols", spec.cols, 80),
        rows: clamp("rows", spec.rows, 24),
        pix_width: spec.pix_width.min(65_535),
        pix_height: spec.pix_height.min(65_535),
        modes: spec.modes.clone(),
    })
}

fn winsize(cols: u32, rows: u32, pix_width: u32, pix_height: u32) -> libc::winsize {
    // (Sizes are validated before; this only keeps them in the kernel's 16 bits.)
    let cap = |v: u32| v.min(u32::from(u16::MAX)) as u16;
    libc::winsize {
        ws_row: cap(rows),
        ws_col: cap(cols),
        ws_xpixel: cap(pix_width),
        ws_ypixel: cap(pix_height),
    }
}

/// Sets the size of the terminal behind `fd` (master or slave).
pub fn resize(fd: &impl AsRawFd, cols: u32, rows: u32, pix_width: u32, pix_height: u32) {
    let ws = winsize(
        cols.clamp(1, MAX_DIMENSION),
        rows.clamp(1, MAX_DIMENSION),
        pix_width,
        pix_height,
    );
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which lives across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc != 0 {
        warn!(error = %io::Error::last_os_error(), "could not resize the terminal");
    }
}

/// A freshly opened terminal: the master (ours) and the slave (the session's).
pub struct OpenPty {
    /// Our side.
    pub master: OwnedFd,
    /// The session's side: its stdin, stdout and stderr.
    pub slave: OwnedFd,
}

/// Opens a terminal of the spec's size and applies its modes.
///
/// Both ends are close-on-exec from the start (never inherited by another session's process,
/// even one forked at the same moment on another thread); the session's process gets the
/// slave as its stdin, stdout and stderr, which clears the flag for it alone.
pub fn open(spec: &PtySpec) -> io::Result<OpenPty> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    let slave = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(slave) };
    // SAFETY: PtyMaster owns its descriptor; into_raw_fd hands that ownership over.
    let master = unsafe {
        <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(
            master,
        ))
    };
    resize(
        &slave,
        spec.cols,
        spec.rows,
        spec.pix_width,
        spec.pix_height,
    );
    apply_modes(&slave, &spec.modes);
    Ok(OpenPty { master, slave })
}

/// Applies RFC 4254 terminal modes; unknown opcodes and out-of-range values are skipped.
fn apply_modes(slave: &OwnedFd, modes: &[(u8, u32)]) {
    // SAFETY: an all-zero termios is a valid value to be overwritten by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes one termios into `t`, valid for the call.
    if unsafe { libc::tcgetattr(slave.as_fd().as_raw_fd(), &mut t) } != 0 {
        return;
    }
    let mut skipped = 0;
    for &(opcode, value) in modes {
        let cc = |index: usize| (index, value);
        let control = match opcode {
            1 => Some(cc(libc::VINTR)),
            2 => Some(cc(libc::VQUIT)),
            3 => Some(cc(libc::VERASE)),
            4 => Some(cc(libc::VKILL)),
            5 => Some(cc(libc::VEOF)),
            6 => Some(cc(libc::VEOL)),
            7 => Some(cc(libc::VEOL2)),
            8 => Some(cc(libc::VSTART)),
            9 => Some(cc(libc::VSTOP)),
            10 => Some(cc(libc::VSUSP)),
            12 => Some(cc(libc::VREPRINT)),
            13 => Some(cc(libc::VWERASE)),
            14 => Some(cc(libc::VLNEXT)),
            18 => Some(cc(libc::VDISCARD)),
            _ => None,
        };
        if let Some((index, value)) = control {
            match u8::try_from(value) {
                Ok(v) => t.c_cc[index] = v,
                Err(_) => skipped += 1,
            }
            continue;
        }
        let on = value != 0;
        let set = |flags: &mut libc::tcflag_t, bit: libc::tcflag_t| {
            if on {
                *flags |= bit
            } else {
                *flags &= !bit
            }
        };
        match opcode {
            30 => set(&mut t.c_iflag, libc::IGNPAR),
            31 => set(&mut t.c_iflag, libc::PARMRK),
            32 => set(&mut t.c_iflag, libc::INPCK),
            33 => set(&mut t.c_iflag, libc::ISTRIP),
            34 => set(&mut t.c_iflag, libc::INLCR),
            35 => set(&mut t.c_iflag, libc::IGNCR),
            36 => set(&mut t.c_iflag, libc::ICRNL),
            37 => set(&mut t.c_iflag, libc::IUCLC),
            38 => set(&mut t.c_iflag, libc::IXON),
            39 => set(&mut t.c_iflag, libc::IXANY),
            40 => set(&mut t.c_iflag, libc::IXOFF),
            41 => set(&mut t.c_iflag, libc::IMAXBEL),
            42 => set(&mut t.c_iflag, libc::IUTF8),
            50 => set(&mut t.c_lflag, libc::ISIG),
            51 => set(&mut t.c_lflag, libc::ICANON),
            53 => set(&mut t.c_lflag, libc::ECHO),
            54 => set(&mut t.c_lflag, libc::ECHOE),
            55 => set(&mut t.c_lflag, libc::ECHOK),
            56 => set(&mut t.c_lflag, libc::ECHONL),
            57 => set(&mut t.c_lflag, libc::NOFLSH),
            58 => set(&mut t.c_lflag, libc::TOSTOP),
            59 => set(&mut t.c_lflag, libc::IEXTEN),
            60 => set(&mut t.c_lflag, libc::ECHOCTL),
            61 => set(&mut t.c_lflag, libc::ECHOKE),
            62 => set(&mut t.c_lflag, libc::PENDIN),
            70 => set(&mut t.c_oflag, libc::OPOST),
            71 => set(&mut t.c_oflag, libc::OLCUC),
            72 => set(&mut t.c_oflag, libc::ONLCR),
            73 => set(&mut t.c_oflag, libc::OCRNL),
            74 => set(&mut t.c_oflag, libc::ONOCR),
            75 => set(&mut t.c_oflag, libc::ONLRET),
            90 => set(&mut t.c_cflag, libc::CS7),
            91 => set(&mut t.c_cflag, libc::CS8),
            92 => set(&mut t.c_cflag, libc::PARENB),
            93 => set(&mut t.c_cflag, libc::PARODD),
            // Speeds mean nothing on a pseudo-terminal; 0 ends the list.
            0 | 128 | 129 => {}
            _ => skipped += 1,
        }
    }
    if skipped > 0 {
        warn!(
            skipped,
            "terminal modes with unknown opcodes or values were skipped"
        );
    }
    // SAFETY: tcsetattr reads one termios from `t`, valid for the call.
    if unsafe { libc::tcsetattr(slave.as_fd().as_raw_fd(), libc::TCSANOW, &t) } != 0 {
        warn!(error = %io::Error::last_os_error(), "could not apply the terminal modes");
    }
}

/// The master side of a terminal, readable and writable from tokio. Clones share the fd.
#[derive(Clone)]
pub struct Master {
    fd: Arc<AsyncFd<OwnedFd>>,
}

impl Master {
    /// Wraps a master fd (made non-blocking here).
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: the AsyncFd owns `fd` and nothing replaces or closes it while registered.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| -> io::Error { e.into() })?;
        Ok(Self { fd: Arc::new(fd) })
    }

    /// Sets the terminal's size.
    pub fn resize(&self, cols: u32, rows: u32, pix_width: u32, pix_height: u32) {
        resize(self.fd.get_ref(), cols, rows, pix_width, pix_height);
    }
}

impl AsyncRead for Master {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let result = guard.try_io(|fd| {
                // SAFETY: reads at most `unfilled.len()` bytes into memory we own.
                let n = unsafe {
                    libc::read(
                        fd.get_ref().as_raw_fd(),
                        unfilled.as_mut_ptr().cast(),
                        unfilled.len(),
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Every slave fd is closed (the session's processes are gone): end of file.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Master {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            let result = guard.try_io(|fd| {
                // SAFETY: writes at most `data.len()` bytes from memory we own.
                let n = unsafe {
                    libc::write(fd.get_ref().as_raw_fd(), data.as_ptr().cast(), data.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(term: &str, cols: u32, rows: u32) -> PtySpec {
        PtySpec {
            term: term.into(),
            cols,
            rows,
            pix_width: 0,
            pix_height: 0,
            modes: vec![],
        }
    }

    #[test]
    fn absurd_sizes_are_clamped_and_bad_terms_refused() {
        let ok = validate(&spec("xterm-256color", 100_000, 0)).unwrap();
        assert_eq!((ok.cols, ok.rows), (MAX_DIMENSION, 24));
        assert!(validate(&spec("", 80, 24)).is_err());
        assert!(validate(&spec("x\u{1b}[2J", 80, 24)).is_err());
        assert!(validate(&spec(&"x".repeat(1000), 80, 24)).is_err());
    }

    #[test]
    fn both_ends_of_a_terminal_are_close_on_exec() {
        let pty = open(&spec("xterm", 80, 24)).unwrap();
        for fd in [&pty.master, &pty.slave] {
            let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert_ne!(flags & libc::FD_CLOEXEC, 0);
        }
    }

    #[test]
    fn a_terminal_opens_with_the_size_and_modes_asked() {
        let mut s = spec("xterm", 132, 43);
        s.modes = vec![(53, 0), (1, 3), (200, 1), (3, 100_000)];
        let pty = open(&s).unwrap();
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!((ws.ws_col, ws.ws_row), (132, 43));
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        unsafe { libc::tcgetattr(pty.slave.as_raw_fd(), &mut t) };
        assert_eq!(t.c_lflag & libc::ECHO, 0, "ECHO was turned off");
        assert_eq!(t.c_cc[libc::VINTR], 3);
        resize(&pty.master, 90, 30, 0, 0);
        unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!((ws.ws_col, ws.ws_row), (90, 30));
    }
}
